"""The compiled receive path on a real publisher PC: with `rtc.udp_port` and rtc.fast_path, the mux
socket is read by the fast path's `Reader`; aiortc's media reaches `on_rtp` through the ingress's
route (its first packet per SSRC through the Python path, which teaches the route the SSRC), RTCP
and DTLS through the Python path; the counts are the ingress's; the route goes with the transport
and the reader with the socket."""

from __future__ import annotations

import pytest
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from sfu.media import fastpath
from sfu.media.transport import TransportConfig
from sfu.media.transport.udpmux import close_muxes, open_mux
from sfu.metrics import COUNTERS
from tests.harness.sfu import free_udp_port
from tests.sfu.media.transport.test_peer import (
    Recorder,
    aiortc_peer,
    loopback_only,
    publish,
    wait_for,
)

__all__ = ["loopback_only"]  # the fixture: ICE on loopback only


@pytest.mark.parametrize("name", ["compiled", "python"])
async def test_publisher_media_comes_through_the_reader(name: str) -> None:
    impl = fastpath.COMPILED if name == "compiled" else fastpath.PYTHON
    assert impl is not None and impl.receives, "the compiled receive path is not built"
    port = free_udp_port()
    config = TransportConfig(udp_port=port, fast_path=impl)
    rec, pc = Recorder(), aiortc_peer()
    pc.addTrack(AudioStreamTrack())
    pc.addTrack(VideoStreamTrack())
    transport, _ = await publish(rec, pc, config)
    try:
        mux = await open_mux("127.0.0.1", port, None)
        reader = mux.reader
        assert reader is not None
        await wait_for(lambda: transport.state == "connected", what="connected")
        senders = {s._ssrc for s in pc.getSenders()}
        await wait_for(lambda: rec.rtp_ssrcs() == senders, what="RTP on both SSRCs")
        await wait_for(lambda: len(rec.rtp) > 40, what="more RTP")
        await wait_for(lambda: any(p[1] == 200 for p in rec.rtcp), 5, "an RTCP SR")
        route = reader.lookup(transport._ingress._remote)
        assert route is not None and set(route.known) == senders
        assert route.rtp_packets > 0.8 * len(rec.rtp) > 0  # all but each SSRC's first few
        stats = transport.stats
        assert stats.rtp_packets_received == len(rec.rtp)
        assert route.unprotect_failures == 0
        await transport.close()
        assert len(reader) == 0  # the route went with the transport
        assert reader.fd >= 0  # the socket stays
    finally:
        await transport.close()
        await pc.close()
        close_muxes()
    assert reader.fd == -1


async def test_one_route_per_source_address() -> None:
    impl = fastpath.COMPILED
    assert impl is not None and impl.receives, "the compiled receive path is not built"
    mux = await open_mux("127.0.0.1", free_udp_port(), impl)
    try:
        first = mux.media_route(("127.0.0.1", 5000), lambda data: None, None)
        assert first is not None and mux.reader.lookup(("127.0.0.1", 5000)) is first
        before = COUNTERS.limits_exceeded.get("mux_route_in_use", 0)
        assert mux.media_route(("127.0.0.1", 5000), lambda data: None, None) is None
        assert COUNTERS.limits_exceeded.get("mux_route_in_use", 0) == before + 1
        mux.drop_route(first)
        assert len(mux.reader) == 0
    finally:
        close_muxes()
    assert mux.media_route(("127.0.0.1", 5001), lambda data: None, None) is None  # closed
