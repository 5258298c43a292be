"""The fast path on a real subscriber PC (`PeerTransport.fast_sender`, rtc.fast_path): a down track
whose copies go through the compiled (or pure-Python reference) per-copy path, SRTP-protected with
a session of its own keyed as the transport's and sent on its socket, reaches aiortc's
RTCPeerConnection; NACK answers go the same way; what is forwarded is counted once; after the
transport closes, its targets are closed: nothing more is built, counted or sent."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc import RTCSessionDescription

from sfu.media import fastpath
from sfu.media.forwarder import DownTrack
from sfu.media.receiver import TrackReceiver
from sfu.media.rtp.header import RtpPacket
from sfu.media.transport import TransportConfig
from sfu.media.transport.srtp import outbound_session
from sfu.metrics import COUNTERS
from tests.sfu.media.transport.test_peer import (
    Recorder,
    aiortc_peer,
    inbound_rtp,
    loopback_only,
    wait_for,
)
from tests.sfu.packets import rtp

__all__ = ["loopback_only"]  # the fixture: ICE on loopback only


@pytest.mark.parametrize("impl", ["compiled", "python"])
async def test_down_track_forwards_through_the_fast_path_to_aiortc(impl: str) -> None:
    implementation = fastpath.COMPILED if impl == "compiled" else fastpath.PYTHON
    assert implementation is not None, "the compiled fast path is not built"
    rec = Recorder()
    transport = rec.transport("subscriber", TransportConfig(fast_path=implementation))
    mid = transport.add_track("audio", "audio/opus", 1111, "PA_x|mic", "TR_a")
    assert transport.fast_sender() is None  # not connected yet
    pc = aiortc_peer()
    try:
        await pc.setRemoteDescription(
            RTCSessionDescription(await transport.create_offer(), "offer")
        )
        await pc.setLocalDescription(await pc.createAnswer())
        await transport.handle_answer(pc.localDescription.sdp)
        await wait_for(lambda: transport.state == "connected", what="connected")
        # a down track's own session protects as the transport's does: same key, same cipher
        assert transport._tx_keying is not None
        probe = rtp(b"\xfc" + bytes(40), payload_type=109, sequence_number=3, ssrc=0x5151)
        own = outbound_session(*transport._tx_keying)
        assert own.protect(probe) == transport._dtls._tx_srtp.protect(probe)
        receiver = TrackReceiver(
            kind="audio", mime_type="audio/opus", clock_rate=48000, layer_count=1,
            send_rtcp=lambda _: None,
        )  # fmt: skip
        sent_rtp: list[bytes] = []
        downtrack = DownTrack(
            receiver,
            ssrc=1111,
            payload_type=transport.track_codec(mid).payload_type,
            send_rtp=sent_rtp.append,
            cname="c",
            fast_sender=transport.fast_sender,
        )
        receiver.add_sink(downtrack)
        downtrack.start()
        before = (COUNTERS.packets_out, COUNTERS.retransmits_out, COUNTERS.send_dropped)
        for seq in range(40):
            data = rtp(b"\xfc" + bytes(40), payload_type=109, sequence_number=seq + 7,
                       timestamp=960 * seq, ssrc=0xAAAA)  # fmt: skip
            receiver.on_rtp(RtpPacket.parse(data), 0)
            await asyncio.sleep(0.002)
        assert sent_rtp == []  # nothing through send_rtp
        assert downtrack.sender_report() == b""  # no publisher SR yet, but counts are pulled
        assert downtrack.packets_sent == 40
        assert COUNTERS.packets_out == before[0] + 40
        deadline = time.monotonic() + 5
        while (got := await inbound_rtp(pc)) != {1111: 40}:
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
        downtrack.retransmit([10, 11, 500])  # 500: never sent
        assert COUNTERS.retransmits_out == before[1] + 2
        await asyncio.sleep(0.01)
        assert COUNTERS.send_dropped == before[2]
        await transport.close()
        data = rtp(b"\xfc" + bytes(40), payload_type=109, sequence_number=47,
                   timestamp=960 * 40, ssrc=0xAAAA)  # fmt: skip
        receiver.on_rtp(RtpPacket.parse(data), 0)
        await asyncio.sleep(0.01)
        # the closed transport closed its target: no copy is built, queued or counted
        assert COUNTERS.send_dropped == before[2]
        assert COUNTERS.packets_out == before[0] + 40
        assert await inbound_rtp(pc) == {1111: 40}
    finally:
        await pc.close()
        await transport.close()
