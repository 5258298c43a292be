"""Micro-benchmark of the per-copy forwarding path: compiled (`sfu.media._fastpath`) vs its pure-Python reference.

One received 1100-byte VP8 packet (the shape of `rtp_rewrite.py`'s: one-byte extensions, a 15-bit
PictureID, TL0PICIDX, TID) is forwarded to N targets with `forward()`: header rewrite, history
slot, SRTP protect (each target its own session; AES_CM_128_HMAC_SHA1_80 unless `--profile gcm`)
and the append to one shared batch (one socket for every subscriber, as with `rtc.udp_port`).
Every `--burst` packets (the packets one event-loop iteration handles) the batch is

- **queued**: dropped unsent (`clear()`): the per-copy cost without the kernel;
- **sendmmsg**: flushed to loopback (`flush()`), one destination port per target, drained by a
  sink process; the compiled batch without and with GSO (grouped per destination), the
  reference with one `sendto` per datagram.

`--vp8` gives every target VP8 offsets (as after a simulcast switch), so the descriptor is
rebuilt per copy. It prints the median over `--rounds` of this process's CPU time (not wall time)
per forwarded copy, in µs, and the ratio; implementations and modes are interleaved within each
round. The last line is one JSON object. Nothing is asserted.

    .venv/bin/python benchmarks/fastpath_micro.py [--targets 1 10 50 150] [--packets 3000]
        [--rounds 5] [--burst 8] [--profile aes|gcm] [--vp8]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pylibsrtp import Policy, Session  # noqa: E402

from benchmarks.rtp_rewrite import make_packet  # noqa: E402
from sfu.media import fastpath  # noqa: E402
from sfu.media.rtp.header import RtpPacket  # noqa: E402

KEY = bytes(range(44))
PROFILES = {
    "aes": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    "gcm": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}
#: the sink: binds N UDP ports, prints them, drains them until stdin closes
SINK = """
import select, socket, sys
n = int(sys.argv[1])
socks = []
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0)); s.setblocking(False); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks), flush=True)
buf = bytearray(65536)
while True:
    ready, _, _ = select.select(socks + [sys.stdin], [], [], 1.0)
    if sys.stdin in ready:
        break
    for s in ready:
        try:
            while True:
                s.recv_into(buf)
        except BlockingIOError:
            pass
"""


def measure(
    impl: fastpath.Implementation,
    ports: list[int],
    sender: socket.socket,
    args: argparse.Namespace,
    mode: str,
) -> float:
    """CPU µs per forwarded copy for one implementation and mode."""
    data = make_packet()
    packet = RtpPacket.parse(data)
    batch = impl.batch(sender.fileno(), gso=mode == "gso", capacity=4096)
    targets = []
    for i, port in enumerate(ports):
        session = Session(Policy(KEY, Policy.SSRC_ANY_OUTBOUND, PROFILES[args.profile]))
        t = impl.target(batch, ("127.0.0.1", port), session)
        t.ssrc = 0x10000 + i
        t.payload_type = 96
        if args.vp8:
            t.pid_offset, t.tl0_offset, t.keyidx_offset = 1000 + i, 7, 0
        targets.append(t)
    forward = impl.forward
    offset, padding = packet.payload_offset, packet.padding_size
    finish = batch.clear if mode == "queued" else batch.flush
    burst = args.burst
    for seq in range(200):  # warm-up: the libsrtp streams are created here
        forward(targets, packet, data, seq, offset, padding, 0.0)
        finish()
    start = time.process_time()
    for seq in range(200, 200 + args.packets):
        forward(targets, packet, data, seq, offset, padding, 0.0)
        if seq % burst == 0:
            finish()
    finish()
    cpu = time.process_time() - start
    batch.close()
    return cpu / (args.packets * len(ports)) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[1, 10, 50, 150])
    parser.add_argument("--packets", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--burst", type=int, default=8)
    parser.add_argument("--profile", choices=sorted(PROFILES), default="aes")
    parser.add_argument("--vp8", action="store_true")
    args = parser.parse_args()
    compiled = fastpath.COMPILED
    if compiled is None:
        raise SystemExit("sfu.media._fastpath is not built: pip install -e .")
    cases = [
        ("compiled", "queued"),
        ("python", "queued"),
        ("compiled", "sendmmsg"),
        ("compiled", "gso"),
        ("python", "sendmmsg"),
    ]
    impls = {"compiled": compiled, "python": fastpath.PYTHON}
    results: dict[str, Any] = {"args": vars(args), "per_copy_us": {}}
    print(
        f"per-copy CPU µs (median of {args.rounds}), {args.profile}, burst {args.burst}"
        f"{', VP8 offsets' if args.vp8 else ''}"
    )
    print(
        f"{'N':>4}  " + "  ".join(f"{i[:4]}/{m:<8}" for i, m in cases) + "  py/c queued  py/c sent"
    )
    for n in args.targets:
        sink = subprocess.Popen(
            [sys.executable, "-c", SINK, str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert sink.stdout is not None
            ports = [int(p) for p in sink.stdout.readline().split()]
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.bind(("127.0.0.1", 0))
            sender.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            samples: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
            for _ in range(args.rounds):
                for impl_name, mode in cases:
                    samples[(impl_name, mode)].append(
                        measure(impls[impl_name], ports, sender, args, mode)
                    )
            sender.close()
        finally:
            if sink.stdin is not None:
                sink.stdin.close()
            sink.wait(timeout=10)
        med = {c: statistics.median(v) for c, v in samples.items()}
        results["per_copy_us"][n] = {f"{i}/{m}": round(v, 3) for (i, m), v in med.items()}
        ratio_q = med[("python", "queued")] / med[("compiled", "queued")]
        ratio_s = med[("python", "sendmmsg")] / min(
            med[("compiled", "sendmmsg")], med[("compiled", "gso")]
        )
        print(
            f"{n:>4}  "
            + "  ".join(f"{med[c]:>13.2f}" for c in cases)
            + f"  {ratio_q:>10.1f}x  {ratio_s:>8.1f}x"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
