"""Element Call 0.26 against Synapse with the application-service mode on: a two-user E2EE call.

Element Call's embedded (widget) build from npm runs in headless Chromium, one browser context
per user, each hosted by ``tests/element_call/host.html`` (the Matrix client side of the widget
API, over Synapse's client-server API). Nothing is configured in Element Call: it finds the
auth service through Synapse's MSC4143 transports (asked over the widget API), gets its token
with its own OpenID token and joins the SFU with per-participant E2EE (the room is encrypted;
keys travel as to-device messages through Synapse).

From outside: RoomService ``ListParticipants`` shows both users with encrypted tracks; each
Element Call decodes the other's video and audio (its own RTP statistics, its video elements
playing). Then Bob leaves the Matrix room: the auth service, told by Synapse's push, removes
him from the SFU, and Alice's Element Call stops receiving him.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from livekit import api
from livekit.protocol import models

from auth_service.tokens import legacy_room_alias
from tests.harness.element_call import ElementCallPage, element_call_session
from tests.integration.test_focus import (
    CALL_MEMBER,
    EJECTED_WITHIN_S,
    Focus,
    Matrix,
    room_path,
)
from tests.integration.test_focus import focus as focus

pytestmark = pytest.mark.asyncio(loop_scope="module")

JOIN_S = 60.0
MEGOLM = {"algorithm": "m.megolm.v1.aes-sha2"}


async def encrypted_call_room(focus: Focus) -> tuple[Matrix, Matrix, str]:
    """Alice's encrypted room (as Element creates a call room), which Bob joined."""
    synapse = focus.synapse
    alice = Matrix(synapse, await asyncio.to_thread(synapse.create_user, "ec_alice", "ALICEDEV"))
    bob = Matrix(synapse, await asyncio.to_thread(synapse.create_user, "ec_bob", "BOBDEV"))
    room_id = (
        await alice.post(
            "/_matrix/client/v3/createRoom",
            {
                "preset": "private_chat",
                "name": "Element Call test",
                "initial_state": [
                    {"type": "m.room.encryption", "state_key": "", "content": MEGOLM}
                ],
                "power_level_content_override": {"events": {CALL_MEMBER: 0}},
            },
        )
    )["room_id"]
    await alice.post(room_path(room_id, "invite"), {"user_id": bob.user.user_id})
    await bob.post(room_path(room_id, "join"), {})
    return alice, bob, room_id


def room_service(focus: Focus) -> api.LiveKitAPI:
    sfu = focus.sfu
    return api.LiveKitAPI(sfu.http_url, sfu.api_key, sfu.api_secret, failover=False)


async def participants(lkapi: api.LiveKitAPI, room: str) -> dict[str, models.ParticipantInfo]:
    answer = await lkapi.room.list_participants(api.ListParticipantsRequest(room=room))
    return {p.identity: p for p in answer.participants}


def receiving(media: dict[str, Any]) -> dict[str, int]:
    """Frames decoded and audio energy summed over Element Call's inbound RTP streams."""
    video = sum(s["framesDecoded"] for s in media["inbound"] if s["kind"] == "video")
    energy = sum(s["totalAudioEnergy"] for s in media["inbound"] if s["kind"] == "audio")
    return {"frames": video, "audio": int(energy * 1e6)}


async def wait_receiving(
    page: ElementCallPage, since: dict[str, int] | None = None
) -> dict[str, int]:
    base = since or {"frames": 0, "audio": 0}

    async def probe() -> dict[str, int]:
        return receiving(await page.media())

    result: dict[str, int] = await page.until(
        probe,
        lambda r: r["frames"] > base["frames"] + 10 and r["audio"] > base["audio"],
        "remote video and audio decoding",
        JOIN_S,
    )
    return result


async def test_element_call_two_users_e2ee_and_a_leaver_removed(focus: Focus) -> None:
    alice, bob, room_id = await encrypted_call_room(focus)
    synapse = focus.synapse
    alias = legacy_room_alias(room_id)
    lkapi = room_service(focus)
    identities = {
        "alice": f"{alice.user.user_id}:{alice.user.device_id}",
        "bob": f"{bob.user.user_id}:{bob.user.device_id}",
    }
    try:
        async with element_call_session(["alice", "bob"]) as session:
            pages = {page.name: page for page in session.pages}
            started = time.monotonic()
            await pages["alice"].start(synapse, alice.user, room_id)
            await pages["bob"].start(synapse, bob.user, room_id)

            async def both_in() -> dict[str, models.ParticipantInfo]:
                try:
                    return await participants(lkapi, alias)
                except api.TwirpError:
                    return {}

            people = await pages["alice"].until(
                both_in,
                lambda p: (
                    set(identities.values()) <= set(p)
                    and all(len(p[i].tracks) >= 2 for i in identities.values())
                ),
                "both users publishing in the SFU room",
                JOIN_S,
            )
            print(f"element call: both published {time.monotonic() - started:.1f} s after start")
            for identity in identities.values():
                for track in people[identity].tracks:
                    assert track.encryption != models.Encryption.Type.NONE, (identity, track)
            for name in ("alice", "bob"):
                got = await wait_receiving(pages[name])
                later = await wait_receiving(pages[name], got)
                print(f"element call: {name} decodes the other's media {later}")
                tiles = await pages[name].tiles()
                assert sum(1 for t in tiles if t["width"] > 0 and not t["paused"]) >= 2, tiles

            left_at = time.monotonic()
            await bob.post(room_path(room_id, "leave"), {})

            async def still_there() -> dict[str, models.ParticipantInfo]:
                return await participants(lkapi, alias)

            await pages["alice"].until(
                still_there,
                lambda p: identities["bob"] not in p,
                "Bob removed from the SFU",
                EJECTED_WITHIN_S * 10,
                interval_s=0.05,
            )
            took = time.monotonic() - left_at
            print(
                f"element call: Bob gone from the SFU {took * 1000:.0f} ms after leaving the room"
            )
            assert took < EJECTED_WITHIN_S * 2
            assert identities["alice"] in await participants(lkapi, alias)

            async def alice_receives() -> dict[str, int]:
                first = receiving(await pages["alice"].media())
                await asyncio.sleep(1.0)
                second = receiving(await pages["alice"].media())
                return {"frames": second["frames"] - first["frames"]}

            await pages["alice"].until(
                alice_receives, lambda r: r["frames"] == 0, "Alice no longer receiving Bob", 15.0
            )
    finally:
        await lkapi.aclose()
    focus.sfu.assert_alive()
