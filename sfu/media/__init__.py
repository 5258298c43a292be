"""The data plane: packets in, packets out, as bytes.

`rtp/` parses and writes RTP/RTCP headers, `sdp` the session descriptions, `transport/` owns the
sockets, ICE, DTLS, SRTP and SCTP of one peer connection, `receiver` takes a publisher's packets
apart into tracks and layers, and `forwarder` rewrites and sends them to each subscriber.
`fastpath` picks the per-copy path: `_fastpath`, compiled from `_fastpath.c` at install time, or
its pure-Python reference `fastpath_py`. Nothing here knows rooms, participants, signalling or configuration files (import-linter enforces it);
the control plane (`sfu.room`, `sfu.signal`) drives it through plain method calls.
"""
