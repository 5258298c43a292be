"""Micro-benchmark of the in-process fan-out: one received VP8 packet through `TrackReceiver.on_rtp`
to N started `DownTrack`s (layer chosen, header rewritten, history kept), sends discarded.

No sockets, SRTP or event loop: what it measures is the data plane's Python per packet and per
subscriber, which `benchmarks/forward_cpu.py` sees only through the noise of a whole SFU process.
Prints the best-of-`--repeat` process CPU time (other load on the machine disturbs it less than
wall time) per packet × subscriber, for each N. It uses only the constructors and `on_rtp`, so the
same file measures an older tree too (run it with that tree first on `PYTHONPATH`).

`--layers 3` gives the receiver three simulcast layers (packets arrive on the lowest one, which
every down track forwards); `--rebuild` calls `fanout_changed` before every packet, as a storm of
switches and allocation changes does (each invalidates the receiver's fan-out), so the number
includes rebuilding it.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fanout_cpu.py [--subscribers 1 50] [--packets 20000]
        [--layers 3] [--rebuild]
"""

from __future__ import annotations

import argparse
import time

from sfu.media.forwarder import DownTrack
from sfu.media.receiver import TrackReceiver
from sfu.media.rtp.header import RtpHeader, RtpPacket
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor

SSRC = 0xABC
FIRST_SEQ = 65000  # the run crosses the 16-bit wrap


def vp8_packet(seq: int, *, key: bool) -> bytes:
    """A Chrome-shaped VP8 packet of about 1100 bytes (abs-send-time and mid extensions)."""
    descriptor = Vp8PayloadDescriptor(
        start_of_partition=True,
        picture_id=seq & 0x7FFF,
        picture_id_15bit=True,
        tl0_pic_idx=seq & 0xFF,
        tid=0,
        layer_sync=key,
        extended=True,
    )
    header = RtpHeader(
        96,
        seq & 0xFFFF,
        (seq * 3000) & 0xFFFFFFFF,
        SSRC,
        extensions=[(2, b"\x12\x34\x56"), (4, b"0")],
    )
    frame_tag = bytes((0x50 if key else 0x51,)) + b"\x3f\x00\x9d\x01\x2a"
    return bytes(header) + bytes(descriptor) + frame_tag + bytes(1050)


def discard(_: bytes) -> None:
    pass


def measure(subscribers: int, packets: int, repeat: int, layers: int, rebuild: bool) -> float:
    """Best CPU seconds per packet × subscriber."""
    receiver = TrackReceiver(
        kind="video", mime_type="video/VP8", clock_rate=90000, layer_count=layers,
        send_rtcp=discard,
    )  # fmt: skip
    receiver.layers[0].ssrc = SSRC  # as the demuxer learns it
    for n in range(subscribers):
        downtrack = DownTrack(receiver, ssrc=1000 + n, payload_type=98, send_rtp=discard, cname="c")
        downtrack.max_layer = 0  # (the layer fed)
        receiver.add_sink(downtrack)
        downtrack.start()
    receiver.on_rtp(RtpPacket.parse(vp8_packet(FIRST_SEQ, key=True)), 0)  # starts every one
    seq = FIRST_SEQ + 1
    best = float("inf")
    for _ in range(repeat):
        batch = [RtpPacket.parse(vp8_packet(seq + i, key=False)) for i in range(packets)]
        seq += packets
        on_rtp, changed = receiver.on_rtp, receiver.fanout_changed
        start = time.process_time()
        if rebuild:
            for packet in batch:
                changed()
                on_rtp(packet, 0)
        else:
            for packet in batch:
                on_rtp(packet, 0)
        best = min(best, time.process_time() - start)
    return best / (packets * subscribers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, nargs="+", default=[1, 50], metavar="N")
    parser.add_argument("--packets", type=int, default=20_000, help="packets per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs (the best is kept)")
    parser.add_argument("--layers", type=int, default=1, help="simulcast layers of the receiver")
    parser.add_argument(
        "--rebuild", action="store_true", help="invalidate the fan-out before every packet"
    )
    args = parser.parse_args()
    for n in args.subscribers:
        ns = measure(n, args.packets, args.repeat, args.layers, args.rebuild) * 1e9
        print(f"N={n}: {ns:.0f} ns per packet x subscriber")


if __name__ == "__main__":
    main()
