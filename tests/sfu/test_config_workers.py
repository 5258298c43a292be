"""rtc.workers: the default (media in the control process), one per CPU, the bounds."""

from __future__ import annotations

import os

import pytest

from sfu.config import MAX_WORKERS, ConfigError, from_mapping, media_workers

SECRET = "s" * 40


def test_default_is_one_process() -> None:
    rtc = from_mapping({"keys": {"k": SECRET}}).rtc
    assert rtc.workers == 1 and media_workers(rtc) == 1


def test_zero_means_one_per_cpu() -> None:
    rtc = from_mapping({"keys": {"k": SECRET}, "rtc": {"workers": 0}}).rtc
    assert media_workers(rtc) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("workers", [-1, MAX_WORKERS + 1])
def test_out_of_range(workers: int) -> None:
    with pytest.raises(ConfigError, match=r"rtc\.workers"):
        from_mapping({"keys": {"k": SECRET}, "rtc": {"workers": workers}})


def test_the_workers_ports_must_fit() -> None:
    ok = {"keys": {"k": SECRET}, "rtc": {"udp_port": 65534, "workers": 2}}
    assert from_mapping(ok).rtc.workers == 2
    with pytest.raises(ConfigError, match="udp_port"):
        from_mapping({"keys": {"k": SECRET}, "rtc": {"udp_port": 65535, "workers": 2}})


def test_spill_load_bounds() -> None:
    assert from_mapping({"keys": {"k": SECRET}}).rtc.worker_spill_load == 0.6
    assert from_mapping({"keys": {"k": SECRET}, "rtc": {"worker_spill_load": 0}}).rtc
    for bad in (-0.1, 4.5):
        with pytest.raises(ConfigError, match=r"rtc\.worker_spill_load"):
            from_mapping({"keys": {"k": SECRET}, "rtc": {"worker_spill_load": bad}})
