"""Benchmark: the load tester's own CPU per received packet, per receive path, A/B interleaved.

A receiver process holds N real `loadtest.participant.Subscriber`s, each on its own loopback UDP
socket (an asyncio datagram endpoint standing in for aioice's connected ICE socket) with a real
libsrtp inbound session. This process is the SFU's stand-in: it protects RTP packets that end
with the load tester's latency trailer (one video SSRC at 30 frames/s in bursts of
`--packets-per-frame`, one audio SSRC at 50 packets/s per subscriber, like a speaker-layout
tile) and sends each to every subscriber socket, packet by packet as an SFU fans out. A few
STUN-looking datagrams go along, which must reach the protocol's own handler.

Per receive path (`--modes`; `main` is the load tester of the `main` branch, exported to a
temporary folder with `git archive`), in `--rounds` interleaved rounds, the receiver reports
Δ(its CPU time) ÷ Δ(packets its subscribers counted) over the measured window, the wake-ups, the
packets sampled and decrypted, the latency p50 of the samples and the loss. Nothing is asserted.

    .venv/bin/python benchmarks/loadtest_rx.py --subscribers 250 --seconds 10 --rounds 3

The last line of stdout is one JSON object with every run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ("main", "per-datagram", "python", "c")
AUDIO_PPS = 50
FPS = 30
VIDEO_PAYLOAD = 1100
AUDIO_PAYLOAD = 120
STUN_EVERY_S = 0.5


# -- the receiving process ------------------------------------------------------------------
class _Socket(asyncio.DatagramProtocol):
    """Stands in for aioice's `StunProtocol`: what is not RTP ends up here."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.other = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.other += 1


def _take_receive(sub: Any, protocol: _Socket) -> None:
    transport = sub.sub_transport
    if hasattr(transport, "take_receive"):
        transport.take_receive(protocol)
        return
    # The `main` branch's load tester: the per-datagram hook its `Transport._connect` installs.
    original = protocol.datagram_received

    def datagram_received(data: bytes, addr: Any) -> None:
        if len(data) >= 12 and 127 < data[0] < 192 and not 191 < data[1] < 224:
            transport.on_rtp(data)
        else:
            original(data, addr)

    protocol.datagram_received = datagram_received  # type: ignore[method-assign]


async def _receive(args: argparse.Namespace) -> None:
    from pylibsrtp import Policy, Session

    from loadtest.participant import Subscriber

    if args.mode == "main":
        rx: Any = None
    else:
        from loadtest import rx

        rx.poll_interval_s = args.poll_ms / 1000

    loop = asyncio.get_running_loop()
    key = bytes.fromhex(args.key)
    subs: list[Any] = []
    protocols: list[_Socket] = []
    for n in range(args.subscribers):
        kwargs = {} if args.mode == "main" else {"rx_mode": args.mode}
        sub = Subscriber(
            "ws://127.0.0.1:9", "token", f"sub-{n}", sample_every=args.sample_every,
            layout=lambda tracks: {}, **kwargs,
        )  # fmt: skip
        policy = Policy(key=key, ssrc_type=Policy.SSRC_ANY_INBOUND)
        sub.sub_transport.unprotect = Session(policy).unprotect
        _, protocol = await loop.create_datagram_endpoint(_Socket, local_addr=("127.0.0.1", 0))
        _take_receive(sub, protocol)
        subs.append(sub)
        protocols.append(protocol)
    ports = [p.transport.get_extra_info("sockname")[1] for p in protocols]
    print(json.dumps({"ports": ports}), flush=True)

    lines: asyncio.Queue[str] = asyncio.Queue()
    loop.add_reader(sys.stdin.fileno(), lambda: lines.put_nowait(sys.stdin.readline()))

    def sample() -> tuple[float, int]:
        return time.process_time(), sum(s.packets for s in subs)

    assert (await lines.get()).strip() == "start"
    cpu0, packets0 = sample()
    t0 = time.monotonic()
    assert (await lines.get()).strip() == "stop"
    cpu1, packets1 = sample()
    t1 = time.monotonic()
    await asyncio.sleep(0.5)  # the last bursts in flight
    streams = [st for s in subs for st in s.streams.values()]
    latency = [x for s in subs for x in s.latency_ms]
    readers = [getattr(s.sub_transport, "reader", None) for s in subs]
    packets = packets1 - packets0
    result = {
        "mode": args.mode,
        "rx": "per-datagram" if readers[0] is None else type(subs[0].table).__name__,
        "loop": type(loop).__module__,
        "window_s": round(t1 - t0, 2),
        "packets": packets,
        "pps": round(packets / (t1 - t0)),
        "cpu_pct": round(100 * (cpu1 - cpu0) / (t1 - t0), 1),
        "us_per_packet": round((cpu1 - cpu0) * 1e6 / max(1, packets), 3),
        "wakeups_per_packet": (
            round(rx.wakeups() / max(1, sum(s.packets for s in subs)), 3)
            if readers[0] is not None
            else 1.0
        ),
        "received": sum(st.received for st in streams),
        "expected": sum(st.expected for st in streams),
        "samples": len(latency),
        "decrypt_errors": sum(s.decrypt_errors for s in subs),
        "latency_p50_ms": round(statistics.median(latency), 3) if latency else None,
        "other_datagrams": sum(p.other for p in protocols),
    }
    print(json.dumps(result), flush=True)
    for p in protocols:
        p.transport.close()
    for sub in subs:
        await sub.sub_transport.close()


def _receiver_main(args: argparse.Namespace) -> None:
    if args.profile:
        import cProfile

        profile = cProfile.Profile()
        args.profile, path = None, args.profile
        profile.runcall(_receiver_main, args)
        profile.dump_stats(path)
        return
    if args.mode in ("main", "per-datagram"):
        import uvloop  # the load tester's workers before batching

        uvloop.run(_receive(args))
    else:
        asyncio.run(_receive(args))


# -- the sending process (this one) ---------------------------------------------------------
def _packets(key: bytes, ssrc_video: int, ssrc_audio: int) -> Any:
    """`packet(ssrc, pt, body, layer)`: the next protected datagram of that stream."""
    from pylibsrtp import Policy, Session

    from loadtest.packets import Trailer, rtp_header

    session = Session(Policy(key=key, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
    seq = {ssrc_video: secrets.randbits(16), ssrc_audio: secrets.randbits(16)}

    def packet(ssrc: int, pt: int, body: bytes, layer: int) -> bytes:
        seq[ssrc] += 1
        header = rtp_header(payload_type=pt, sequence_number=seq[ssrc], timestamp=0, ssrc=ssrc)
        trailer = bytes(Trailer(0, layer, 0, time.monotonic_ns()))
        return bytes(session.protect(header + body + trailer))

    return packet


def _run_one(args: argparse.Namespace, mode: str, tree: Path | None) -> dict[str, Any]:
    key = secrets.token_bytes(30)
    env = dict(os.environ, PYTHONPATH=str(tree if mode == "main" else REPO_ROOT))
    command = [
        sys.executable, __file__, "--receiver", mode,
        "--subscribers", str(args.subscribers), "--sample-every", str(args.sample_every),
        "--key", key.hex(), "--poll-ms", str(args.poll_ms),
        *(["--profile", f"{args.profile}.{mode}"] if args.profile else []),
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        ports = json.loads(process.stdout.readline())["ports"]
        packet = _packets(key, 0x1111, 0x2222)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 22)
        targets = [("127.0.0.1", p) for p in ports]
        stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
        sent = 0
        start = time.monotonic()
        next_video = next_audio = next_stun = start
        marks = {"start": start + args.warmup, "stop": start + args.warmup + args.seconds}
        end = marks["stop"] + 0.2
        while (now := time.monotonic()) < end:
            for name, at in list(marks.items()):
                if now >= at:
                    process.stdin.write(name + "\n")
                    process.stdin.flush()
                    del marks[name]
            due: list[bytes] = []
            while next_video <= now:
                due += [packet(0x1111, 96, b"\x00" * (VIDEO_PAYLOAD - 16), 2)
                        for _ in range(args.packets_per_frame)]  # fmt: skip
                next_video += 1 / FPS
            while next_audio <= now:
                due.append(packet(0x2222, 111, b"\x00" * (AUDIO_PAYLOAD - 16), 255))
                next_audio += 1 / AUDIO_PPS
            if next_stun <= now:
                due.append(stun)
                next_stun += STUN_EVERY_S
            for datagram in due:
                for target in targets:
                    with contextlib.suppress(BlockingIOError):
                        sock.sendto(datagram, target)
                        sent += 1
            time.sleep(max(0.0, min(next_video, next_audio) - time.monotonic()))
        for name in marks:
            process.stdin.write(name + "\n")
        process.stdin.flush()
        result: dict[str, Any] = json.loads(process.stdout.readline())
        result["sent"] = sent
        sock.close()
        return result
    finally:
        with contextlib.suppress(Exception):
            process.stdin.close()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _export_main() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="loadtest-main-"))
    archive = subprocess.run(
        ["git", "archive", "main", "loadtest"], cwd=REPO_ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subscribers", type=int, default=250, help="subscriber sockets (default 250)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every mode")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--sample-every", type=int, default=20, help="as the load tester's")
    p.add_argument("--packets-per-frame", type=int, default=2, help="video burst (30 frames/s)")
    p.add_argument("--poll-ms", type=float, default=100.0, help="loadtest.rx.poll_interval_s, ms")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--receiver", choices=MODES, dest="mode", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    p.add_argument("--profile", help="cProfile the receiver into this file (inflates its CPU)")
    args = p.parse_args()
    if args.mode:
        _receiver_main(args)
        return
    tree = _export_main() if "main" in args.modes else None
    runs: list[dict[str, Any]] = []
    pps = FPS * args.packets_per_frame + AUDIO_PPS
    print(
        f"{args.subscribers} subscribers × {pps} packets/s, {args.seconds:g} s windows, "
        f"sample 1 in {args.sample_every}"
    )
    print(f"{'round':>5} {'mode':>12} {'rx':>12} {'pps':>7} {'cpu %':>6} {'µs/pkt':>7} "
          f"{'wake/pkt':>8} {'loss %':>7} {'lat p50':>8} {'other':>6}")  # fmt: skip
    for r in range(args.rounds):
        for mode in args.modes:
            res = _run_one(args, mode, tree)
            res["round"] = r
            runs.append(res)
            loss = 100 * max(0, res["expected"] - res["received"]) / max(1, res["expected"])
            print(
                f"{r:>5} {mode:>12} {res['rx']:>12} {res['pps']:>7} {res['cpu_pct']:>6} "
                f"{res['us_per_packet']:>7} {res['wakeups_per_packet']:>8} {loss:>7.3f} "
                f"{res['latency_p50_ms']!s:>8} {res['other_datagrams']:>6}",
                flush=True,
            )
    summary = {
        mode: statistics.median(r["us_per_packet"] for r in runs if r["mode"] == mode)
        for mode in args.modes
    }
    print("median µs per received packet: " + ", ".join(f"{m} {v}" for m, v in summary.items()))
    out = {"subscribers": args.subscribers, "pps_per_subscriber": pps, "runs": runs,
           "median_us_per_packet": summary}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
