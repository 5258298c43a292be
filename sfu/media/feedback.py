"""A subscriber connection's RTCP to what acts on it: `FeedbackRouter`.

Receiver reports, PLI, FIR and NACK go to the `DownTrack` (`sfu.media.forwarder`) whose SSRC
they name; transport-cc feedback and REMB to the link's `SubscriberBandwidth`; every other RTCP
type is left unparsed.
"""

from __future__ import annotations

from sfu.media.bandwidth import SubscriberBandwidth
from sfu.media.forwarder import DownTrack
from sfu.media.rtcp_intake import RtcpIntake
from sfu.media.rtp import rtcp
from sfu.metrics import COUNTERS

__all__ = ["FeedbackRouter"]


class FeedbackRouter:
    """Subscriber-PC RTCP → the down track it is about, or the transport's link.

    Only what is acted on is parsed: receiver reports, NACK, PLI, FIR for the down tracks;
    transport-cc feedback and REMB for `bandwidth` (`SubscriberBandwidth`). Anything else (SDES,
    XR...) is left unparsed. A transport-cc packet can announce 65,535 statuses in 40 bytes: its
    parser and `SubscriberBandwidth` both work per byte present, not per status announced.
    """

    def __init__(self, bandwidth: SubscriberBandwidth | None = None) -> None:
        self._by_ssrc: dict[int, DownTrack] = {}
        self.bandwidth = bandwidth
        self._rtcp = RtcpIntake()
        self._rtcp.on(rtcp.ReceiverReport, self._on_receiver_report)
        self._rtcp.on(rtcp.Nack, self._on_nack)
        self._rtcp.on(rtcp.Pli, self._on_pli)
        self._rtcp.on(rtcp.Fir, self._on_fir)
        if bandwidth is not None:
            self._rtcp.on(rtcp.TransportCcFeedback, bandwidth.on_transport_cc)
            self._rtcp.on(rtcp.Remb, bandwidth.on_remb)

    def add(self, downtrack: DownTrack) -> None:
        self._by_ssrc[downtrack.ssrc] = downtrack

    def remove(self, downtrack: DownTrack) -> None:
        if self._by_ssrc.get(downtrack.ssrc) is downtrack:
            del self._by_ssrc[downtrack.ssrc]

    def on_rtcp(self, data: bytes) -> None:
        """One decrypted RTCP compound from the subscriber."""
        self._rtcp(data)

    def _on_receiver_report(self, report: rtcp.ReceiverReport) -> None:
        for block in report.reports:  # at most 31
            downtrack = self._by_ssrc.get(block.ssrc)
            if downtrack is not None:
                downtrack.on_report_block(block)

    def _on_nack(self, nack: rtcp.Nack) -> None:
        downtrack = self._by_ssrc.get(nack.media_ssrc)
        if downtrack is not None:
            COUNTERS.nack_in += 1
            downtrack.on_nack(nack)

    def _on_pli(self, pli: rtcp.Pli) -> None:
        downtrack = self._by_ssrc.get(pli.media_ssrc)
        if downtrack is not None:
            COUNTERS.pli_in += 1
            downtrack.on_keyframe_request()

    def _on_fir(self, fir: rtcp.Fir) -> None:
        for entry in fir.entries:
            downtrack = self._by_ssrc.get(entry.ssrc)
            if downtrack is not None:
                COUNTERS.fir_in += 1
                downtrack.on_keyframe_request()
