"""Room: the track index, batched ParticipantUpdates, SubscriptionPermission, duplicate identity."""

from __future__ import annotations

import asyncio

from livekit.protocol import models, rtc

from sfu.room import room as room_module
from tests.sfu.room.fakes import Client, joined, make_room


def updates(client: Client) -> list[rtc.ParticipantUpdate]:
    return [r.update for r in client.of_kind("update")]


async def test_filling_a_room_costs_a_few_updates_per_participant() -> None:
    room = make_room()
    people = [Client(f"p{i}") for i in range(200)]
    for person in people:
        await room.join(person.participant)
    await asyncio.sleep(room_module.UPDATE_INTERVAL * 2)
    sent = sum(len(updates(p)) for p in people)
    assert sent < 5 * len(people), sent
    # and yet everyone learnt about everyone who joined after it
    last = people[-1].participant.sid
    assert all(any(i.sid == last for u in updates(p) for i in u.participants) for p in people)
    await room.close()


async def test_mute_toggles_are_coalesced() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    bob = await joined(room, "bob")
    sid = await alice.publish_audio("mic", "0")
    before = len(updates(bob))
    for i in range(100):
        alice.participant.set_track_muted(sid, i % 2 == 0)
    await asyncio.sleep(room_module.UPDATE_INTERVAL * 2)
    assert len(updates(bob)) == before + 1
    info = updates(bob)[-1].participants[0]
    assert info.sid == alice.participant.sid and info.tracks[0].muted is False
    await room.close()


async def test_tracks_are_indexed_by_sid() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    sid = await alice.publish_audio("mic", "0")
    track = room.find_track(sid)
    assert track is not None and track.publisher is alice.participant
    assert room.track_count() == 1
    await alice.participant.close(models.DisconnectReason.CLIENT_INITIATED)
    assert room.find_track(sid) is None and room.track_count() == 0
    await room.close()


def permission_updates(client: Client) -> list[tuple[str, bool]]:
    return [
        (r.subscription_permission_update.track_sid, r.subscription_permission_update.allowed)
        for r in client.of_kind("subscription_permission_update")
    ]


async def test_subscription_permission_denies_and_grants() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    bob = await joined(room, "bob")
    carol = await joined(room, "carol")
    sid = await alice.publish_audio("mic", "0")
    assert sid in bob.participant.subscriptions and sid in carol.participant.subscriptions
    # only carol, by identity
    alice.participant.update_subscription_permission(
        rtc.SubscriptionPermission(
            all_participants=False,
            track_permissions=[rtc.TrackPermission(participant_identity="carol", all_tracks=True)],
        )
    )
    assert sid not in bob.participant.subscriptions and sid in carol.participant.subscriptions
    assert permission_updates(bob) == [(sid, False)]
    # an explicit subscribe is refused the same way, once
    bob.participant.update_subscription(rtc.UpdateSubscription(track_sids=[sid], subscribe=True))
    assert sid not in bob.participant.subscriptions and permission_updates(bob) == [(sid, False)]
    # bob by sid, this track only: granted, and subscribed since he wanted it
    alice.participant.update_subscription_permission(
        rtc.SubscriptionPermission(
            all_participants=False,
            track_permissions=[
                rtc.TrackPermission(participant_sid=bob.participant.sid, track_sids=[sid])
            ],
        )
    )
    assert sid in bob.participant.subscriptions and permission_updates(bob)[-1] == (sid, True)
    assert sid not in carol.participant.subscriptions
    # a newcomer that is not listed is refused at join
    dave = await joined(room, "dave")
    assert sid not in dave.participant.subscriptions and permission_updates(dave) == [(sid, False)]
    await room.close()


async def test_duplicate_identity_replaces_and_closes_the_old_participant() -> None:
    room = make_room()
    first = await joined(room, "x")
    await first.publish_audio("mic", "0")
    second = await joined(room, "x")
    assert first.participant.closed and not second.participant.closed
    assert room.participants["x"] is second.participant and room.track_count() == 0
    assert first.of_kind("leave")[0].leave.reason == models.DisconnectReason.DUPLICATE_IDENTITY
    assert first.publisher.closed and first.subscriber.closed
    await room.close()


async def test_a_hidden_participant_is_announced_only_to_itself() -> None:
    room = make_room()
    alice = await joined(room, "alice")
    ghost = await joined(room, "ghost", hidden=True)
    await asyncio.sleep(room_module.UPDATE_INTERVAL * 2)
    ghost_sid = ghost.participant.sid
    assert not any(i.sid == ghost_sid for u in updates(alice) for i in u.participants)
    assert any(i.sid == ghost_sid for u in updates(ghost) for i in u.participants)
    await ghost.participant.close(models.DisconnectReason.CLIENT_INITIATED)
    await asyncio.sleep(room_module.UPDATE_INTERVAL * 2)
    assert not any(i.sid == ghost_sid for u in updates(alice) for i in u.participants)
    await room.close()


class _Level:
    is_video = False

    def __init__(self, level: float) -> None:
        self.level = level

    def take_audio_level(self) -> float:
        return self.level


class _Speaker:
    hidden = False

    def __init__(self, sid: str, level: float) -> None:
        self.sid = sid
        info = models.TrackInfo(muted=False)
        self.published = {"TR_a": type("T", (), {"receiver": _Level(level), "info": info})()}
        self.heard: list[list[models.SpeakerInfo]] = []

    def send_speakers(self, speakers: list[models.SpeakerInfo]) -> None:
        self.heard.append(list(speakers))


async def test_a_quiet_new_speaker_is_announced_and_a_small_change_is_not() -> None:
    room = make_room()
    quiet = _Speaker("PA_quiet", 0.03)  # −30 dBov-ish: above the speaking threshold, level 0.03
    room.participants["quiet"] = quiet  # type: ignore[assignment]
    room.update_speakers()
    assert [[(s.sid, s.active) for s in batch] for batch in quiet.heard] == [[("PA_quiet", True)]]
    quiet.published["TR_a"].receiver.level = 0.05  # a change below SPEAKER_LEVEL_STEP
    room.update_speakers()
    assert len(quiet.heard) == 1
    del room.participants["quiet"]
    await room.close()


async def test_each_member_reaches_the_room_through_its_own_listener() -> None:
    room = make_room()
    alice, bob = await joined(room, "alice"), await joined(room, "bob")
    assert isinstance(alice.participant.events, room_module.RoomListener)
    assert alice.participant.events.participant is alice.participant
    assert bob.participant.events is not alice.participant.events
    sid = await alice.publish_audio("mic", "0")
    assert alice.participant.events.find_track(sid) is room.find_track(sid) is not None
    await room.close()


async def test_connection_quality_goes_to_each_member_for_itself_and_whom_it_receives() -> None:
    room = make_room()
    alice, bob, carol = [await joined(room, n) for n in ("alice", "bob", "carol")]
    await alice.publish_audio("mic", "0")
    room.update_connection_quality(0.0)  # alice's track was heard within the interval: not LOST

    def qualities(client: Client) -> dict[str, int]:
        (response,) = client.of_kind("connection_quality")
        return {u.participant_sid: u.quality for u in response.connection_quality.updates}

    excellent = models.ConnectionQuality.EXCELLENT
    assert qualities(bob) == {alice.participant.sid: excellent, bob.participant.sid: excellent}
    assert set(qualities(alice)) == {alice.participant.sid}
    assert set(qualities(carol)) == {alice.participant.sid, carol.participant.sid}
    await room.close()


async def test_connection_quality_is_spread_over_calls_in_turn() -> None:
    """A share per call (the speaker loop's ticks): each member is told once per round, in join
    order, and a member who left is skipped; a new round then takes everyone again."""
    room = make_room()
    people = [await joined(room, f"p{i}") for i in range(10)]
    await people[0].publish_audio("mic", "0")
    told = []
    for _ in range(3):  # 10 members, a quarter each call: 3, 3, 3
        room.update_connection_quality(0.0, 0.25)
        told.append([p.participant.identity for p in people if p.of_kind("connection_quality")])
    assert told == [[f"p{i}" for i in range(n)] for n in (3, 6, 9)]
    room.remove(people[9].participant)  # never told: its turn comes after it left
    room.update_connection_quality(0.0, 0.25)  # the round's last call: nobody left to tell
    assert not people[9].of_kind("connection_quality")
    room.update_connection_quality(0.0, 0.25)  # a new round: p0, p1, p2 again
    assert [len(p.of_kind("connection_quality")) for p in people[:4]] == [2, 2, 2, 1]
    # bob's update still names the publisher, scored in the round before
    (_, latest) = people[1].of_kind("connection_quality")
    sids = {u.participant_sid for u in latest.connection_quality.updates}
    assert sids == {people[0].participant.sid, people[1].participant.sid}
    await room.close()
