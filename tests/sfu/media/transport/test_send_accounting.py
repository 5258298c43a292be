"""What the SFU counts as forwarded: only what the transport handed to the socket
(`livekit_packet_total{direction="outgoing"}`), with the transport's drops exported on their own
(`sfu_send_dropped_total`); a DownTrack sending through a real PeerTransport."""

from __future__ import annotations

from sfu.media.forwarder import DownTrack
from sfu.media.receiver import TrackReceiver
from sfu.media.rtp.header import RtpPacket
from sfu.media.transport.peer import PeerTransport, TransportConfig
from sfu.metrics import COUNTERS, Metrics
from tests.sfu.packets import rtp


def _transport() -> PeerTransport:
    return PeerTransport(
        "subscriber",
        TransportConfig(),
        on_rtp=lambda _: None,
        on_rtcp=lambda _: None,
        on_data=lambda label, data: None,
        on_state=lambda state: None,
    )


def _opus(seq: int) -> RtpPacket:
    data = rtp(b"\xfc" + bytes(40), payload_type=111, sequence_number=seq, timestamp=960 * seq)
    return RtpPacket.parse(data)


async def test_packets_the_transport_drops_are_not_counted_as_forwarded() -> None:
    transport = _transport()  # never connected: it drops whatever it is given
    receiver = TrackReceiver(
        kind="audio",
        mime_type="audio/opus",
        clock_rate=48000,
        layer_count=1,
        send_rtcp=lambda _: None,
    )
    downtrack = DownTrack(
        receiver, ssrc=0xB, payload_type=111, send_rtp=transport.send_rtp, cname="c"
    )
    receiver.add_sink(downtrack)
    downtrack.start()
    before = (
        COUNTERS.packets_out,
        COUNTERS.bytes_out,
        COUNTERS.retransmits_out,
        COUNTERS.send_dropped,
    )
    for seq in range(1, 6):
        receiver.on_rtp(_opus(seq), 0)
    downtrack.retransmit([2, 3])
    assert downtrack.packets_sent == 5  # the down track did hand them on
    assert transport.stats.send_dropped == 7
    assert COUNTERS.packets_out == before[0]  # was +5: counted before the transport dropped them
    assert COUNTERS.bytes_out == before[1]
    assert COUNTERS.retransmits_out == before[2]
    assert COUNTERS.send_dropped == before[3] + 7
    text = Metrics("n").render().decode()
    assert "sfu_send_dropped_total{" in text
    assert "# HELP livekit_packet_dropped_total received packets dropped" in text
    await transport.close()
