"""Micro-benchmark of the receive path of the shared socket: armed streams vs Python per packet.

One publisher's VP8 packets (1100 bytes, SRTP AES_CM_128_HMAC_SHA1_80) arrive on one socket read
by the compiled reader (`sfu.media._fastrecv`), routed to a real `RtpDemuxer` → `TrackReceiver`
with N real `DownTrack`s, each forwarding through a compiled per-copy target of its own SRTP
session onto one shared batch that is flushed to a loopback sink after every drain (one
destination port per down track, GSO on), the shape of `rtc.udp_port` with `rtc.fast_path: auto`.

- **armed**: the receiver arms the layer's `Stream` (`sfu.media.layerstream`): after the first
  packet the reader takes every packet itself, Python is not entered per packet;
- **python**: the receiver never arms (as before this path): each packet goes to `on_rtp` →
  `RtpPacket.parse` → demultiplexer → `TrackReceiver.on_rtp` → `forward`.

Packets are sent in bursts of `--burst` (one event-loop iteration's worth) by this process and
drained; only the drain and the flush are timed, as this thread's CPU time (not wall time), and
printed per received packet and per forwarded copy, in µs: the median over `--rounds`, the two
modes interleaved within each round. The last line is one JSON object. Nothing is asserted.

    .venv/bin/python benchmarks/receive_micro.py [--targets 4 150] [--packets 4000] [--rounds 5]
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

from benchmarks.fastpath_micro import SINK  # noqa: E402
from benchmarks.rtp_rewrite import make_packet  # noqa: E402
from sfu.media import fastpath  # noqa: E402
from sfu.media.forwarder import DownTrack  # noqa: E402
from sfu.media.receiver import RtpDemuxer, TrackReceiver  # noqa: E402
from tests.harness.unflushed_batch import UnflushedBatch  # noqa: E402

KEY = bytes(range(30))
PROFILE = Policy.SRTP_PROFILE_AES128_CM_SHA1_80


def session(direction: int) -> Session:
    policy = Policy(KEY, direction, PROFILE)
    policy.allow_repeat_tx = True
    return Session(policy)


def run(impl: Any, ports: list[int], mode: str, packets: int, burst: int) -> float:
    """This thread's CPU seconds to drain and forward `packets` packets."""
    reader_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reader_sock.bind(("127.0.0.1", 0))
    reader_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    source = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    source.bind(("127.0.0.1", 0))
    send_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    reader = impl.reader(reader_sock.fileno(), lambda data, addr: None)
    demuxer = RtpDemuxer()
    receiver = TrackReceiver(
        kind="video", mime_type="video/VP8", clock_rate=90000, layer_count=1,
        send_rtcp=lambda data: None,
    )  # fmt: skip
    if mode == "python":
        receiver._armable = False
    demuxer.bind("0", receiver, {"": 0}, payload_type=96)
    rx = session(Policy.SSRC_ANY_INBOUND)
    route = impl.route(source.getsockname(), demuxer.on_rtp, rx)
    reader.add(route)
    batch = impl.batch(send_sock.fileno(), gso=True, capacity=4096)
    shared = UnflushedBatch(batch)
    tracks = []
    for i, port in enumerate(ports):
        target = impl.target(batch, ("127.0.0.1", port), session(Policy.SSRC_ANY_OUTBOUND))
        track = DownTrack(
            receiver, ssrc=0x1000 + i, payload_type=96, send_rtp=lambda data: None,
            cname="x", fast_sender=lambda t=target: (impl.forward, t, shared),
        )  # fmt: skip
        receiver.add_sink(track)
        track.start()
        tracks.append(track)
    tx = session(Policy.SSRC_ANY_OUTBOUND)
    template = bytearray(make_packet())
    template[1] = 96  # the bound payload type, no marker
    keyframe = bytearray(template)
    cpu = 0.0
    seq = 0
    first = True
    for start in range(0, packets + burst, burst):
        for _ in range(burst):
            data = keyframe if first else template
            data[2:4] = (seq & 0xFFFF).to_bytes(2, "big")
            data[4:8] = ((seq // 8) * 3000 & 0xFFFFFFFF).to_bytes(4, "big")
            source.sendto(tx.protect(bytes(data)), reader_sock.getsockname())
            seq += 1
            first = False
        if start == 0:
            route.learn(int.from_bytes(template[8:12], "big"))  # what the Python ingress does
        got = 0
        t0 = time.thread_time()
        while got < burst:
            got += reader.drain(burst - got)
        batch.flush()
        if start:  # the first burst starts the stream (key frame, switch): not timed
            cpu += time.thread_time() - t0
    if mode == "armed":
        assert route.taken >= packets - burst, (route.taken, packets)
    else:
        assert route.taken == 0
    sent = sum(t._fast[1].packets_sent for t in tracks)
    assert sent >= packets * len(ports) * 0.99, (sent, packets * len(ports))
    reader.close()
    batch.close()
    for s in (reader_sock, source, send_sock):
        s.close()
    return cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[4, 150])
    parser.add_argument("--packets", type=int, default=4000)
    parser.add_argument("--burst", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    impl = fastpath.COMPILED
    if impl is None or not impl.receives:
        sys.exit("the compiled paths are not built (pip install -e .)")
    sink = subprocess.Popen(
        [sys.executable, "-c", SINK, str(max(args.targets))],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert sink.stdout is not None
    ports = [int(p) for p in sink.stdout.readline().split()]
    results: dict[str, Any] = {}
    try:
        for n in args.targets:
            times: dict[str, list[float]] = {"armed": [], "python": []}
            for _ in range(args.rounds):
                for mode in times:
                    times[mode].append(run(impl, ports[:n], mode, args.packets, args.burst))
            row = {}
            for mode, samples in times.items():
                per_packet = 1e6 * statistics.median(samples) / args.packets
                row[mode] = {
                    "us_per_received": round(per_packet, 2),
                    "us_per_copy": round(per_packet / n, 3),
                }
            saved = row["python"]["us_per_received"] - row["armed"]["us_per_received"]
            row["saved_us_per_received"] = round(saved, 2)
            results[str(n)] = row
            print(
                f"N={n:>4}: armed {row['armed']['us_per_received']:7.2f} µs/received "
                f"({row['armed']['us_per_copy']:.3f}/copy), python "
                f"{row['python']['us_per_received']:7.2f} ({row['python']['us_per_copy']:.3f}"
                f"/copy): {saved:.2f} µs saved per received packet"
            )
    finally:
        assert sink.stdin is not None
        sink.stdin.close()
        sink.wait(10)
    print(json.dumps({"benchmark": "receive_micro", "config": vars(args), "results": results}))


if __name__ == "__main__":
    main()
