"""Micro-benchmark of the RTP hot path in `sfu.media.rtp`: parse once per received packet, rewrite per
subscriber.

The packet is shaped like Chrome's simulcast VP8 video: 1100 bytes, a one-byte extension block
with abs-send-time, transport-cc, mid and rid, and a VP8 descriptor with a 15-bit PictureID,
TL0PICIDX and TID. Prints the best-of-N process CPU time per operation in ns (CPU time rather
than wall time, so that other load on the machine disturbs the figures less).

    .venv/bin/python benchmarks/rtp_rewrite.py [--number 200000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import time
import timeit
from collections.abc import Callable

from sfu.media.rtp.extensions import (
    ExtensionBlockTemplate,
    build_extension_block,
    encode_abs_send_time,
    encode_transport_cc,
)
from sfu.media.rtp.header import RtpHeader, RtpPacket, rewrite
from sfu.media.rtp.vp8 import Vp8PayloadDescriptor, munged_descriptor

PACKET_SIZE = 1100


def make_packet() -> bytes:
    header = RtpHeader(
        payload_type=96,
        sequence_number=4242,
        timestamp=0x12345678,
        ssrc=0x1A2B3C4D,
        extensions=[(2, b"\x12\x34\x56"), (3, b"\x01\x02"), (4, b"0"), (10, b"h")],
    )
    descriptor = bytes(
        Vp8PayloadDescriptor(
            start_of_partition=True, picture_id=0x1234, picture_id_15bit=True, tl0_pic_idx=7, tid=0
        )
    )
    head = bytes(header) + descriptor
    return head + bytes(PACKET_SIZE - len(head))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs (the best is kept)")
    args = parser.parse_args()

    data = make_packet()
    packet = RtpPacket.parse(data)
    off, end = packet.payload_offset, len(data) - packet.padding_size
    desc = Vp8PayloadDescriptor.parse(data, off, end)
    ext = build_extension_block([(3, encode_transport_cc(77)), (2, encode_abs_send_time(99))])
    new_desc = munged_descriptor(desc, picture_id=0x0123, tl0_pic_idx=3)
    template = ExtensionBlockTemplate([(3, 2), (2, 3)])

    seq_offset, ts_offset, pid_offset, tl0_offset = 17, 90_000, 5, 2

    def subscriber_path() -> bytes:
        # What sfu.media.forwarder.DownTrack does per subscriber for one video packet after a layer
        # switch: offsets applied to seq/ts and, in the VP8 descriptor, picture id/TL0PICIDX.
        d = Vp8PayloadDescriptor.parse(data, off, end)
        head = munged_descriptor(
            d,
            picture_id=((d.picture_id or 0) - pid_offset) & 0x7FFF,
            tl0_pic_idx=((d.tl0_pic_idx or 0) - tl0_offset) & 0xFF,
        )
        return rewrite(
            packet,
            payload_type=100,
            sequence_number=(packet.sequence_number - seq_offset) & 0xFFFF,
            timestamp=(packet.timestamp - ts_offset) & 0xFFFFFFFF,
            ssrc=0xCAFE,
            payload_header=head,
            payload_header_size=d.size,
        )

    cases: list[tuple[str, Callable[[], object]]] = [
        ("parse: RtpPacket.parse (header + 4 extensions)", lambda: RtpPacket.parse(data)),
        ("parse: Vp8PayloadDescriptor.parse", lambda: Vp8PayloadDescriptor.parse(data, off, end)),
        (
            "rewrite: header only",
            lambda: rewrite(packet, payload_type=100, sequence_number=1, timestamp=2, ssrc=0xCAFE),
        ),
        (
            "rewrite: header + extension block",
            lambda: rewrite(
                packet,
                payload_type=100,
                sequence_number=1,
                timestamp=2,
                ssrc=0xCAFE,
                extensions=ext,
            ),
        ),
        (
            "rewrite: header + extensions + VP8 descriptor",
            lambda: rewrite(
                packet,
                payload_type=100,
                sequence_number=1,
                timestamp=2,
                ssrc=0xCAFE,
                extensions=ext,
                payload_header=new_desc,
                payload_header_size=desc.size,
            ),
        ),
        (
            "build_extension_block (transport-cc + abs-send-time)",
            lambda: build_extension_block([(3, b"\0\1"), (2, b"\0\0\1")]),
        ),
        (
            "ExtensionBlockTemplate.build (same two elements)",
            lambda: template.build(b"\0\1", b"\0\0\1"),
        ),
        ("per subscriber after a switch: descriptor parse + munge + rewrite", subscriber_path),
    ]
    print(f"{PACKET_SIZE}-byte packet, CPU time, best of {args.repeat} x {args.number} calls")
    for name, fn in cases:
        timer = timeit.Timer(fn, timer=time.process_time)
        best = min(timer.repeat(number=args.number, repeat=args.repeat))
        print(f"{name:55s} {best / args.number * 1e9:8.0f} ns/op")


if __name__ == "__main__":
    main()
