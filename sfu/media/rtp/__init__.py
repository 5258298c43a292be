"""Pure packet code: RTP/RTCP headers, header extensions, VP8 descriptors, sequence arithmetic.

No I/O, no asyncio, nothing above this package may be imported from here.

Modules: `errors` (the `PacketError` hierarchy), `header` (RTP parse/build/rewrite), `extensions`
(RFC 8285 extension values and blocks), `rtcp` and `twcc` (RTCP packets), `vp8` and `h264`
(payload descriptors, key frames), `red` (RFC 2198 redundant audio: where the primary starts),
`seqnum` (wrapping arithmetic), `timebase` (relating sources' RTP timebases through sender
reports).
"""
