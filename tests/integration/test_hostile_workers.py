"""The hostile suites' attacks that reach the data plane, against a node with `rtc.workers: 2`.

The stage of `test_hostile.py` / `test_hostile_media.py` (`tests/harness/hostile_stage.py`) with
two media worker processes placed by load alone, so bob (worker 0) receives alice (worker 1)
through the relay. Each attack and its checks are the single-process suites' own; the node's
RSS, CPU and descriptors are the control process's and both workers' together. A subset keeps
the suite short: the attacks on a connected peer, the UDP ports and the data channel, where a worker (not the control process) takes the blow, and the candidate flood
(each candidate a control message to a worker). The whole suites run the same way with
`SFU_TEST_RTC_WORKERS=2` (`tests/harness/sfu.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import pytest_asyncio

from tests.harness.hostile_stage import Stage, StageHolder, stage_holder
from tests.integration import test_hostile as signalling
from tests.integration import test_hostile_media as media
from tests.integration.test_workers import until, worker_metrics

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
#: the suites' per-test fixture, on this module's `holder`
stage = signalling.stage
#: seconds for the workers' next counter reports (sent once a second)
REPORT_WAIT_S = 3.0

ATTACKS: list[Callable[[Stage], Awaitable[None]]] = [
    media.test_nack_amplification,
    media.test_unanswered_offer_port_flood,
    media.test_stray_stun_and_forged_srtp,
    media.test_huge_data_message,
    signalling.test_ice_candidate_flood,
]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def holder(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StageHolder]:
    async with stage_holder(tmp_path_factory, workers=2) as shared:
        yield shared


async def test_the_call_crosses_the_workers(stage: Stage) -> None:
    """Bob decodes alice's frames (the stage waits for ten) through the relay. The workers
    report their counters once a second, so the first relayed packets may show in the next."""
    relayed = ("sfu_worker_relay_received_total", "0")

    async def reported() -> bool:
        return bool((await worker_metrics(stage.sfu)).get(relayed))

    with contextlib.suppress(AssertionError):  # the assertions below say what is missing
        await until(reported, "a relay report", REPORT_WAIT_S)
    metrics = await worker_metrics(stage.sfu)
    assert metrics[("sfu_worker_participants", "0")] == 1, metrics  # bob
    assert metrics[("sfu_worker_participants", "1")] == 1, metrics  # alice
    assert metrics[relayed] > 0, metrics


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.__name__.removeprefix("test_"))
async def test_attack_with_two_workers(
    stage: Stage, attack: Callable[[Stage], Awaitable[None]]
) -> None:
    await attack(stage)
