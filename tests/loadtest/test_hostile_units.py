"""The hostile client's byte builders build what their findings describe."""

from __future__ import annotations

import json
import struct

from livekit.protocol import models, rtc

from loadtest import hostile_wire as hostile
from loadtest.packets import PT_RTPFB, Feedback, split_rtcp
from loadtest.webrtc import Sdp, parse_candidate_init


def test_add_track_blowup_is_small_on_the_wire() -> None:
    request = hostile.add_track_blowup("c")
    assert (len(request.layers), len(request.simulcast_codecs)) == (3000, 3000)
    wire = rtc.SignalRequest(add_track=request).SerializeToString()
    assert len(wire) < 16_000
    assert rtc.SignalRequest.FromString(wire).add_track.cid == "c"


def test_twcc_compound_is_30_transport_cc_packets_of_65535_statuses() -> None:
    blob = hostile.twcc_flood_compound()
    assert len(blob) == 1200
    packets = list(split_rtcp(blob))
    assert len(packets) == 30
    for fmt, pt, packet in packets:
        assert (fmt, pt, len(packet)) == (15, PT_RTPFB, 40)
        sender, media, base, count = struct.unpack_from("!IIHH", packet, 4)
        assert (sender, media, base, count) == (1, 2, 0, 65535)
        chunks = struct.unpack_from("!9H", packet, 20)
        assert all(c >> 15 == 0 and c & 0x1FFF == 8191 for c in chunks)  # run length, T=0


def test_nack_compound_lists_the_last_512_sequence_numbers_eight_times() -> None:
    blob = hostile.nack_flood_compound(7, 1234, highest=100)
    packets = list(split_rtcp(blob))
    assert len(packets) == 8
    expected = [(100 - 511 + n) & 0xFFFF for n in range(512)]
    for _, _, packet in packets:
        assert len(packet) == 136
        nack = Feedback.parse(packet)
        assert nack.is_nack and (nack.sender_ssrc, nack.media_ssrc) == (7, 1234)
        assert nack.nack_sequence_numbers() == expected
    assert len(blob) <= 1200


def test_ssrc_group_flood_offer_parses_and_fits_a_signal_message() -> None:
    lines = hostile.ssrc_group_flood(20_000)
    assert sum(line.startswith("a=ssrc:") for line in lines) == 20_000
    assert sum(line.startswith("a=ssrc-group:FID ") for line in lines) == 20_000
    sdp = hostile.offer_sdp(hostile.fake_local(), [hostile.video_section("v", lines)])
    assert len(sdp) < (1 << 20) - 1000
    assert len(Sdp.parse(sdp).media[0].ssrcs) == 20_000


def test_rid_flood_has_distinct_rids_and_fits_a_signal_message() -> None:
    lines = hostile.rid_flood(50_000)
    rids = {line.split(":")[1].split()[0] for line in lines}
    assert len(rids) == 50_000
    sdp = hostile.offer_sdp(hostile.fake_local(), [hostile.video_section("v", lines)])
    message = rtc.SignalRequest(offer=rtc.SessionDescription(type="offer", sdp=sdp, id=1))
    assert len(message.SerializeToString()) < 1 << 20


def test_candidate_flood_and_trickle_are_readable_candidates() -> None:
    lines = hostile.candidate_flood(20_000)
    sdp = hostile.offer_sdp(hostile.fake_local(), [hostile.audio_section("a")], candidates=lines)
    media = Sdp.parse(sdp).media[0]
    assert len(media.candidates) == 20_000
    assert media.candidates[-1].split()[4:6] == ["10.0.0.1", "20000"]
    init = hostile.candidate_init_json("127.0.0.1", 5000, 2**31 - 1)
    assert parse_candidate_init(init) is not None
    assert json.loads(init)["sdpMid"] == "0"


def test_malformed_stun_has_a_one_byte_priority() -> None:
    data = hostile.malformed_stun()
    msg_type, length, cookie = struct.unpack_from("!HHI", data)
    assert (msg_type, length, cookie) == (1, 8, 0x2112A442)
    assert len(data) == 20 + length
    assert struct.unpack_from("!HH", data, 20) == (0x24, 1)  # PRIORITY, length 1


def test_forged_srtp_looks_like_rtp() -> None:
    data = hostile.forged_srtp()
    assert data[0] >> 6 == 2 and 127 < data[0] < 192 and data[1] & 0x7F == 96


def test_spoofed_data_packets_name_the_victim() -> None:
    speaker = models.DataPacket.FromString(hostile.speaker_packet("PA_v").SerializeToString())
    assert speaker.WhichOneof("value") == "speaker"
    assert speaker.speaker.speakers[0].sid == "PA_v"
    caption = hostile.transcription_packet("victim")
    assert caption.transcription.transcribed_participant_identity == "victim"


def test_offer_sdp_bundles_every_section_with_the_same_transport() -> None:
    local = hostile.fake_local()
    sections = [hostile.DATA_SECTION, hostile.audio_section("a"), hostile.video_section("v")]
    parsed = Sdp.parse(hostile.offer_sdp(local, sections, candidates=[]))
    assert [m.kind for m in parsed.media] == ["application", "audio", "video"]
    assert [m.mid for m in parsed.media] == ["0", "1", "2"]
    assert {m.ice_ufrag for m in parsed.media} == {local.ufrag}
    assert parsed.media[1].msid == "hostile-stream a"


def test_candidate_address_reads_the_first_udp_candidate() -> None:
    sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=candidate:1 1 udp 1 127.0.0.1 5555 typ host\r\n"
    assert hostile.candidate_address(sdp) == ("127.0.0.1", 5555)
