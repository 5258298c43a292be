"""A client namespace whose downlink from the SFU is a bad network: rate cap, random loss, delay.

`shaped_namespace(sfu_udp_port)` makes a `client_namespace()` (tests/harness/netns.py) and
shapes what the SFU's UDP port sends into it, on the host side of the veth pair:

    SFU socket ──▶ OUTPUT hook: NFQUEUE ──▶ veth egress qdisc ──▶ namespace
                   (tests/harness/nfq_shaper.py:   htb 1:  (default 1:10, unshaped)
                    loss, delay; splits UDP GSO     └ u32 sport == sfu_udp_port → 1:20
                    batches into datagrams)            └ tbf: the rate cap (when capped)

- **Rate cap** (`cap(kbit)`, `lift()`, changeable mid-test): a `tbf` under htb class 1:20, with
  a drop-tail queue of `queue_ms` at that rate (at least `MIN_QUEUE_PACKETS` full datagrams). Only
  the SFU's media port is capped; signalling and the test page's HTTP are not.
- **Loss and delay** (`set_loss(p)`, `set_delay(ms)`): this kernel has no netem, so an iptables
  NFQUEUE rule on the host's OUTPUT hook (`-o <veth> -p udp --sport <port>`) hands every
  datagram to a user-space process that drops it with probability p or holds its verdict for the
  delay. No `--queue-bypass`: if the process dies, the link goes dark and the test notices
  (`check_alive()` at exit), instead of silently losing its shaping.
- **UDP GSO**: the SFU sends runs of equal-size datagrams as one GSO packet
  (sfu/media/transport/batch.py, sfu/media/_fastpath.c). The kernel's nfnetlink_queue segments a
  GSO packet before queueing it, so the shaper and the qdisc after it see single datagrams;
  loss never takes out a batch, and the tbf queue drops datagrams, not batches. (The veth itself
  has tx-udp-segmentation on; nothing here relies on it. The SFU keeps its default send_mode.)

Everything is removed at exit, in reverse order: the iptables rule (by its exact spec), the
shaper process (SIGTERM to its PID, then SIGKILL, bounded), the qdiscs (deleting the namespace
deletes the veth pair and its qdiscs). Needs root, iproute2 (`tc`), iptables and the
`netfilterqueue` package (`make test` installs them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.netns import Namespace, client_namespace

REPO_ROOT = Path(__file__).resolve().parents[2]
TC = shutil.which("tc") or "/usr/sbin/tc"
IPTABLES = shutil.which("iptables") or "/usr/sbin/iptables"
UNSHAPED_RATE = "10gbit"
QUEUE_MS = 300.0
MIN_QUEUE_PACKETS = 4
MTU_BYTES = 1514
BURST_MS = 10.0
CONTROL_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0


class ShaperError(AssertionError):
    """A shaping step failed, or the shaper process died while a test depended on it."""


def _run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if result.returncode != 0:
        raise ShaperError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _rule(dev: str, udp_port: int, queue: int, ports: int = 1) -> list[str]:
    """The iptables rule spec (after -I/-D OUTPUT) that queues the SFU's datagrams to `dev`."""
    sport = str(udp_port) if ports == 1 else f"{udp_port}:{udp_port + ports - 1}"
    spec = ["-o", dev, "-p", "udp", "--sport", sport]
    return [*spec, "-j", "NFQUEUE", "--queue-num", str(queue)]


@dataclass
class ShapedDownlink:
    """The shaping of one namespace's downlink; every method takes effect at once."""

    ns: Namespace
    sfu_udp_port: int
    process: subprocess.Popen[bytes]
    queue: int
    cap_kbit: float | None = None
    history: list[tuple[float, str]] = field(default_factory=list)  # (monotonic, what changed)
    _earlier_drops: int = 0  # by tbfs replaced or removed since
    _pending: bytes = b""

    @property
    def dev(self) -> str:
        return self.ns.host_dev

    # -- rate ------------------------------------------------------------------------------------

    def cap(self, kbit: float, *, queue_ms: float = QUEUE_MS) -> None:
        """Cap the SFU's media into the namespace at `kbit` kbit/s, with a queue of `queue_ms`."""
        rate_bytes = kbit * 1000 / 8
        burst = max(int(rate_bytes * BURST_MS / 1000), 2 * MTU_BYTES)
        limit = max(int(rate_bytes * queue_ms / 1000), MIN_QUEUE_PACKETS * MTU_BYTES)
        if self.cap_kbit is not None:  # a fresh tbf, so its counters start at zero
            self._earlier_drops += self._tbf()[0]
            _run(TC, "qdisc", "del", "dev", self.dev, "parent", "1:20", "handle", "20:")
        _run(TC, "qdisc", "add", "dev", self.dev, "parent", "1:20", "handle", "20:", "tbf",
             "rate", f"{kbit:g}kbit", "burst", str(burst), "limit", str(limit))  # fmt: skip
        self.cap_kbit = kbit
        self._note(f"cap {kbit:g} kbit/s (queue {queue_ms:g} ms = {limit} B)")

    def lift(self) -> None:
        """Remove the rate cap (the class falls back to its default FIFO)."""
        if self.cap_kbit is not None:
            self._earlier_drops += self._tbf()[0]
            _run(TC, "qdisc", "del", "dev", self.dev, "parent", "1:20", "handle", "20:")
        self.cap_kbit = None
        self._note("cap lifted")

    # -- loss and delay --------------------------------------------------------------------------

    def set_loss(self, probability: float) -> dict[str, Any]:
        self._note(f"loss {probability:.1%}")
        return self._control({"loss": probability})

    def set_delay(self, ms: float) -> dict[str, Any]:
        self._note(f"delay {ms:g} ms")
        return self._control({"delay_ms": ms})

    def shaper_stats(self) -> dict[str, Any]:
        return self._control({"stats": True})

    def class_stats(self) -> dict[str, int]:
        """Bytes and packets of the SFU's media into the namespace (what htb class 1:20 sent),
        the datagrams the rate cap dropped since the start (every tbf so far) and the current
        tbf's backlog in bytes. Parsed from `tc -s` text: iproute2 6.1 prints no JSON for htb
        classes."""
        classes = _run(TC, "-s", "class", "show", "dev", self.dev)
        sent = re.search(r"class htb 1:20 .*\n\s*Sent (\d+) bytes (\d+) pkt", classes)
        drops, backlog = self._tbf()
        return {
            "bytes": int(sent.group(1)) if sent else 0,
            "packets": int(sent.group(2)) if sent else 0,
            "drops": self._earlier_drops + drops,
            "backlog": backlog,
        }

    def _tbf(self) -> tuple[int, int]:
        """(drops, backlog bytes) of the current tbf; (0, 0) when uncapped."""
        qdiscs = _run(TC, "-s", "qdisc", "show", "dev", self.dev)
        tbf = re.search(
            r"qdisc tbf 20: .*\n\s*Sent \d+ bytes \d+ pkt \(dropped (\d+).*\n\s*backlog (\d+)b",
            qdiscs,
        )
        return (int(tbf.group(1)), int(tbf.group(2))) if tbf else (0, 0)

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ShaperError(f"the NFQUEUE shaper (pid {self.process.pid}) exited with {code}")

    def _note(self, what: str) -> None:
        self.history.append((time.monotonic(), what))

    def _control(self, command: dict[str, Any]) -> dict[str, Any]:
        self.check_alive()
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        self.process.stdin.flush()
        answer = self._read_line(CONTROL_TIMEOUT_S)
        if "error" in answer:
            raise ShaperError(f"shaper refused {command}: {answer['error']}")
        return answer

    def _read_line(self, timeout_s: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise ShaperError(f"the NFQUEUE shaper did not answer in {timeout_s} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ShaperError(f"the NFQUEUE shaper exited ({self.process.wait(5)})")
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        return answer


def _install_qdiscs(dev: str, udp_port: int, ports: int = 1) -> None:
    _run(TC, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "10")
    for classid in ("1:10", "1:20"):
        _run(TC, "class", "add", "dev", dev, "parent", "1:", "classid", classid, "htb",
             "rate", UNSHAPED_RATE)  # fmt: skip
    for port in range(udp_port, udp_port + ports):  # one rate cap for all of them together
        _run(TC, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1",
             "u32", "match", "ip", "protocol", "17", "0xff", "match", "ip", "sport", str(port),
             "0xffff", "flowid", "1:20")  # fmt: skip


def _start_shaper(shaping: Shaping) -> tuple[subprocess.Popen[bytes], int]:
    argv = [sys.executable, "-m", "tests.harness.nfq_shaper", "--loss", str(shaping.loss)]
    argv += ["--delay-ms", str(shaping.delay_ms), "--seed", str(shaping.seed)]
    pipe = subprocess.PIPE
    process = subprocess.Popen(argv, stdin=pipe, stdout=pipe, cwd=REPO_ROOT, start_new_session=True)
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout.fileno()], [], [], 20.0)
    line = process.stdout.readline() if ready else b""
    try:
        hello = json.loads(line) if line else {}
    except ValueError:
        hello = {}
    if not hello.get("ready"):
        _stop(process)
        raise ShaperError(f"the NFQUEUE shaper did not start (said {line!r})")
    return process, int(hello["queue"])


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT_S)
    for pipe in (process.stdin, process.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


@dataclass(frozen=True)
class Shaping:
    """How a downlink starts out (every part can change later through `ShapedDownlink`)."""

    loss: float = 0.0
    delay_ms: float = 0.0
    cap_kbit: float | None = None
    seed: int = 1  # of the loss draws: a run's losses repeat


@contextlib.contextmanager
def shaped_downlink(
    ns: Namespace, sfu_udp_port: int, shaping: Shaping = Shaping(), *, ports: int = 1
) -> Iterator[ShapedDownlink]:
    """Shape what `sfu_udp_port` (and the `ports` - 1 after it: one per media worker) sends
    into `ns` (see the module doc); undone at exit."""
    if not ns.host_dev:
        raise ShaperError(f"namespace {ns.name} has no host-side device to shape")
    _install_qdiscs(ns.host_dev, sfu_udp_port, ports)
    process, queue = _start_shaper(shaping)
    rule = _rule(ns.host_dev, sfu_udp_port, queue, ports)
    try:
        _run(IPTABLES, "-w", "10", "-I", "OUTPUT", *rule)
        try:
            link = ShapedDownlink(ns, sfu_udp_port, process, queue)
            if shaping.cap_kbit is not None:
                link.cap(shaping.cap_kbit)
            yield link
            link.check_alive()
        finally:
            _run(IPTABLES, "-w", "10", "-D", "OUTPUT", *rule)
    finally:
        _stop(process)


@contextlib.contextmanager
def shaped_namespace(
    sfu_udp_port: int, shaping: Shaping = Shaping(), *, ports: int = 1
) -> Iterator[ShapedDownlink]:
    """A fresh client namespace (`link.ns`) whose downlink from `sfu_udp_port` (and the
    `ports` - 1 after it) is shaped."""
    with client_namespace() as ns, shaped_downlink(ns, sfu_udp_port, shaping, ports=ports) as link:
        yield link


def sfu_config_for(namespaces: list[Namespace], udp_port: int) -> dict[str, Any]:
    """`extra_config` for `running_sfu`: one UDP port (what the shaping matches), bound on
    loopback (the harness's health check, unshaped clients) and on each namespace's veth address
    (advertised as it is: no node_ip)."""
    addresses = ["127.0.0.1", *(ns.host_ip for ns in namespaces)]
    return {"bind_addresses": addresses, "rtc": {"udp_port": udp_port, "node_ip": ""}}
