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
        mux = await open_mux("127.0.0.1", port)
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
