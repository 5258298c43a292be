"""tests/harness/shaper.py against real datagrams: what it claims to do to a downlink, it does.

A sender on the host stands in for the SFU: bound to the veth address on one UDP port, it sends
runs of 8 datagrams as one UDP GSO packet (UDP_SEGMENT), each datagram carrying its sequence
number and send time. A receiver inside the namespace records what arrives and when (both read
CLOCK_MONOTONIC, which namespaces share). Checked: loss hits single datagrams, not GSO batches
(and the shaper saw every datagram separately); the added delay is the delay asked for; the
rate cap holds the rate it is set to and lifting it restores the full rate; nothing is left
behind (iptables rule, shaper process) at exit.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import pytest

from tests.harness.netns import Namespace
from tests.harness.sfu import free_udp_port
from tests.harness.shaper import IPTABLES, ShapedDownlink, Shaping, shaped_namespace

pytestmark = pytest.mark.slow

SOL_UDP, UDP_SEGMENT = 17, 103
DATAGRAM = 1000
PER_BATCH = 8
HEADER = struct.Struct("!Id")  # sequence number, send time (monotonic)
WARM_UP = b"\xff" * 12  # sequence number 2**32 - 1: not counted

RECEIVER = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(0.2)
print("ready", flush=True)
end = time.monotonic() + float(sys.argv[3])
got = []
while time.monotonic() < end:
    try:
        data = s.recv(4096)
    except TimeoutError:
        continue
    seq = int.from_bytes(data[:4], "big")
    if seq == 0xFFFFFFFF:
        continue
    sent = __import__("struct").unpack("!d", data[4:12])[0]
    got.append((seq, sent, time.monotonic(), len(data)))
print(json.dumps(got), flush=True)
"""


class Receiver:
    def __init__(self, ns: Namespace, port: int, seconds: float) -> None:
        argv = ns.exec_argv(sys.executable, "-c", RECEIVER, ns.inner_ip, str(port), str(seconds))
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def result(self, timeout_s: float = 30.0) -> list[tuple[int, float, float, int]]:
        out, _ = self.process.communicate(timeout=timeout_s)
        return [tuple(x) for x in json.loads(out.splitlines()[-1])]  # type: ignore[misc]


def _sender(link: ShapedDownlink) -> socket.socket:
    """The SFU's stand-in; the veth's neighbour entry is resolved before it returns (the kernel
    keeps only a few datagrams while ARP is pending, as a call's ICE checks would have done)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((link.ns.host_ip, link.sfu_udp_port))
    s.sendto(WARM_UP, (link.ns.inner_ip, link.sfu_udp_port))
    time.sleep(0.5)
    s.setsockopt(SOL_UDP, UDP_SEGMENT, DATAGRAM)
    return s


def _send_batches(
    s: socket.socket, link: ShapedDownlink, batches: int, rate_bps: float, first: int = 0
) -> int:
    """`batches` GSO packets of PER_BATCH datagrams, paced at `rate_bps`; returns the next seq."""
    seq = first
    interval = PER_BATCH * DATAGRAM * 8 / rate_bps
    start = time.monotonic()
    for i in range(batches):
        now = time.monotonic()
        payload = b"".join(
            HEADER.pack(seq + k, now).ljust(DATAGRAM, b"\x00") for k in range(PER_BATCH)
        )
        s.sendto(payload, (link.ns.inner_ip, link.sfu_udp_port))
        seq += PER_BATCH
        delay = start + (i + 1) * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return seq


def _rules() -> str:
    return subprocess.run(
        [IPTABLES, "-w", "10", "-S", "OUTPUT"], capture_output=True, text=True, check=True
    ).stdout


def test_loss_hits_datagrams_not_gso_batches() -> None:
    port = free_udp_port()
    with shaped_namespace(port, Shaping(loss=0.2, seed=7)) as link:
        receiver = Receiver(link.ns, port, seconds=6.0)
        with _sender(link) as s:
            _send_batches(s, link, batches=500, rate_bps=8_000_000)  # 4 s
        got = receiver.result()
        stats: dict[str, Any] = link.shaper_stats()
        rule = f"--queue-num {link.queue}"
        assert rule in _rules()
        pid = link.process.pid
    print(f"shaper: {stats}; received {len(got)} of {500 * PER_BATCH}")
    assert stats["seen"] == 500 * PER_BATCH + 1, "the shaper did not see every datagram alone"
    assert 0.75 <= len(got) / (500 * PER_BATCH) <= 0.85
    per_batch = Counter(seq // PER_BATCH for seq, *_ in got)
    partial = sum(1 for n in per_batch.values() if 0 < n < PER_BATCH)
    # with 20 % independent loss, 1 - 0.8**8 - 0.2**8 ≈ 83 % of batches lose some, not all
    assert partial >= 0.7 * 500, f"only {partial} of 500 batches partly delivered: batches dropped"
    assert all(size == DATAGRAM for *_, size in got)
    assert rule not in _rules(), "the iptables rule outlived the context manager"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_added_delay() -> None:
    port = free_udp_port()
    with shaped_namespace(port, Shaping(delay_ms=120.0)) as link:
        receiver = Receiver(link.ns, port, seconds=5.0)
        with _sender(link) as s:
            _send_batches(s, link, batches=100, rate_bps=2_000_000)  # 3.2 s
        got = receiver.result()
        link.set_delay(0)
    delays = [(received - sent) * 1000 for _, sent, received, _ in got]
    print(f"one-way delay: median {statistics.median(delays):.1f} ms, max {max(delays):.1f} ms")
    assert len(got) == 100 * PER_BATCH
    assert 115.0 <= statistics.median(delays) <= 160.0
    assert min(delays) >= 115.0


def test_rate_cap_holds_and_lifts() -> None:
    port = free_udp_port()
    with shaped_namespace(port, Shaping(cap_kbit=800)) as link:
        receiver = Receiver(link.ns, port, seconds=9.0)
        with _sender(link) as s:
            t_capped = time.monotonic()
            seq = _send_batches(s, link, batches=150, rate_bps=3_000_000)  # 3.2 s
            counted = link.class_stats()
            link.lift()
            t_lifted = time.monotonic()
            _send_batches(s, link, batches=150, rate_bps=3_000_000, first=seq)
        got = receiver.result()
    print(f"htb class 1:20: {counted}")

    def rate(since: float, until: float) -> float:
        window = [size for _, _, at, size in got if since <= at < until]
        return sum(window) * 8 / (until - since)

    capped = rate(t_capped + 1.0, t_lifted)
    lifted = rate(t_lifted + 0.5, t_lifted + 3.0)
    print(f"capped at 800 kbit/s: {capped / 1000:.0f} kbit/s; lifted: {lifted / 1000:.0f} kbit/s")
    assert 0.8 * 800_000 <= capped <= 1.1 * 800_000
    assert lifted >= 0.85 * 3_000_000
    assert counted["drops"] > 0 and counted["packets"] >= len([x for x in got if x[2] < t_lifted])
