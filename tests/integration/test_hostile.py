"""Hostile clients against the real SFU while a real call keeps flowing: signalling attacks.

One SFU process and one LiveKit Python SDK call (alice publishes video + audio, bob receives)
are shared by the module (`tests/harness/hostile_stage.py`). Each test lets a third party run one
attack of `loadtest.hostile` (bounded in count and time) and then checks that the node stayed
healthy:

- `/healthz` polled every 50 ms from a separate process answers every time within 100 ms;
- the SFU's RSS grows by less than the attack's budget (default 50 MB), its FD count returns
  to within a few of the baseline once the attacker has gone, its log has no traceback;
- bob keeps receiving alice: < 1 % RTP loss over the attack, and frames still arrive after it;
- where the protocol has an answer, the attacker got it (e.g. `LIMIT_EXCEEDED`).

A watchdog cancels an attack that pushes RSS past `ABORT_RSS_MB` (the node would go down next),
and a node that did not survive is rebuilt before the next test. Each test prints a
`HOSTILE` line (name, verdict, /healthz max, RSS delta); with `HOSTILE_RESULTS=path` the rows
are also appended there as JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from livekit.protocol import rtc

from loadtest import hostile
from tests.harness.hostile_stage import (
    DEFAULT_RSS_MB,
    Stage,
    StageHolder,
    run_attack,
    stage_holder,
)

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def holder(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StageHolder]:
    async with stage_holder(tmp_path_factory) as shared:
        yield shared


@pytest_asyncio.fixture(loop_scope="module")
async def stage(holder: StageHolder) -> AsyncIterator[Stage]:
    stage = await holder.ensure()
    yield stage
    holder.dirty = stage.damaged


# -- one attack, measured -------------------------------------------------------------------------


# -- signalling attacks ---------------------------------------------------------------------------


async def test_control_a_well_behaved_client(stage: Stage) -> None:
    """No attack: a well-behaved loadtest subscriber joins, receives 3 s, leaves. Its row is the
    noise floor of the measurements on this machine; every check must hold."""
    token = stage.token("polite")

    async def polite() -> hostile.AttackResult:
        subscriber = await hostile.connected_subscriber(stage.sfu.url, token, "polite")
        try:
            await asyncio.sleep(3.0)
        finally:
            await subscriber.close()
        return hostile.AttackResult("control", notes={"packets": subscriber.packets})

    outcome = await run_attack(stage, "control (no attack)", polite)
    outcome.verdict(DEFAULT_RSS_MB)


async def test_add_track_layers_times_codecs(stage: Stage) -> None:
    """(1) 4 × AddTrackRequest with 3,000 layers × 3,000 simulcast codecs: refused, cheaply."""
    token = stage.token("hostile-layers")
    outcome = await run_attack(
        stage,
        "1 add_track_layers_x_codecs",
        lambda: hostile.layer_codec_blowup(stage.sfu.url, token),
    )
    result = outcome.result
    if result is not None:
        refused = result.refused_with(rtc.RequestResponse.Reason.LIMIT_EXCEEDED)
        outcome.require(refused == 4, f"{refused} of 4 requests refused with LIMIT_EXCEEDED")
        outcome.require(
            result.notes.get("max_layers", 0) <= 3 and result.notes.get("max_codecs", 0) <= 2,
            f"a TrackInfo came back with {result.notes}",
        )
    outcome.verdict(DEFAULT_RSS_MB)


async def test_ssrc_fid_offer(stage: Stage) -> None:
    """(8) A publisher offer with 20k a=ssrc and 20k FID groups: no stall."""
    token = stage.token("hostile-ssrc")
    outcome = await run_attack(
        stage, "8 ssrc_fid_offer", lambda: hostile.ssrc_fid_flood(stage.sfu.url, token)
    )
    outcome.verdict(DEFAULT_RSS_MB)


async def test_simulcast_rid_offer(stage: Stage) -> None:
    """(9) An offer declaring 50k rids: refused or capped at 3 layers."""
    token = stage.token("hostile-rids")
    outcome = await run_attack(
        stage, "9 rid_offer", lambda: hostile.simulcast_rid_flood(stage.sfu.url, token)
    )
    if outcome.result is not None:
        rids = outcome.result.notes.get("answer_rids", 0)
        outcome.require(rids <= 3, f"the answer accepted {rids} rids")
    outcome.verdict(DEFAULT_RSS_MB)


async def test_ice_candidate_flood(stage: Stage) -> None:
    """(12) 20k SDP candidates + 5k trickled: no stall, and checks go to at most 64 of them."""
    canaries = []
    for _ in range(100):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        canaries.append(sock)
    token = stage.token("hostile-candidates")
    addresses = [s.getsockname() for s in canaries]
    try:
        outcome = await run_attack(
            stage,
            "12 ice_candidate_flood",
            lambda: hostile.candidate_flood_attack(stage.sfu.url, token, canaries=addresses),
        )
        contacted = 0
        for sock in canaries:
            with contextlib.suppress(BlockingIOError):
                sock.recv(2048)
                contacted += 1
    finally:
        for sock in canaries:
            sock.close()
    if outcome.result is not None:
        outcome.result.notes["canaries_contacted"] = contacted
    outcome.require(contacted <= 64, f"STUN checks went to {contacted} of 100 trickled canaries")
    outcome.verdict(DEFAULT_RSS_MB)


async def test_huge_track_name_and_mute_storm(stage: Stage) -> None:
    """(10) A 900 KB track name (refused: track strings are bounded), then 200 mute toggles of
    a published track while 20 listeners never read what each toggle sends them."""
    outcome = await run_attack(
        stage,
        "10 huge_trackinfo_mute_storm",
        lambda: hostile.huge_track_name_mute_storm(stage.sfu.url, stage.token),
        rss_budget_mb=100,
    )
    if outcome.result is not None:
        notes = outcome.result.notes
        outcome.require("256 bytes" in notes.get("name_refused", ""), f"the name: {notes}")
        outcome.require(outcome.result.sent == 200, f"{outcome.result.sent} of 200 toggles sent")
    outcome.verdict(100)


async def test_published_track_flood(stage: Stage) -> None:
    """(11) 3 × (32 AddTrack + offer): the 65th track is refused; bob sees at most 64.

    (The audit's 30 rounds also wedge the SDK client in this process, so the suite stops at 3.)
    """
    token = stage.token("hostile-tracks")
    seen: list[int] = []

    async def attack() -> hostile.AttackResult:
        async def count() -> None:
            await asyncio.sleep(1.0)
            remote = stage.bob.room.remote_participants.get("hostile-tracks")
            seen.append(len(remote.track_publications) if remote else 0)

        return await hostile.track_count_flood(stage.sfu.url, token, rounds=3, before_leave=count)

    outcome = await run_attack(stage, "11 published_track_flood", attack, settle_s=3.0)
    if outcome.result is not None:
        refused = outcome.result.refused_with(rtc.RequestResponse.Reason.LIMIT_EXCEEDED)
        outcome.result.notes["bob_sees_tracks"] = seen
        outcome.require(refused >= 1, "no AddTrackRequest was refused with LIMIT_EXCEEDED")
        outcome.require(bool(seen) and seen[0] <= 64, f"bob saw {seen} tracks of the attacker")
    outcome.verdict(DEFAULT_RSS_MB)


async def test_subscribe_toggle_flood(stage: Stage) -> None:
    """(17) 100k subscribe/unsubscribe toggles without answering: the next offer stays small."""
    token = stage.token("hostile-toggle")
    outcome = await run_attack(
        stage,
        "17 subscribe_toggle_flood",
        lambda: hostile.subscription_toggle_flood(stage.sfu.url, token, stage.video_sid),
    )
    if outcome.result is not None:
        mlines = outcome.result.notes.get("next_offer_mlines")
        outcome.require(mlines is not None and mlines <= 8, f"next offer has {mlines} m-lines")
    outcome.verdict(DEFAULT_RSS_MB)


async def test_update_subscription_sid_flood(stage: Stage) -> None:
    """(23) 3 × 1 MiB UpdateSubscription of 60k made-up sids: a bounded answer (at most 1,024
    SubscriptionResponses per request), not one per sid."""
    token = stage.token("hostile-sids")
    outcome = await run_attack(
        stage,
        "23 update_subscription_sid_flood",
        lambda: hostile.subscription_sid_flood(stage.sfu.url, token),
    )
    if outcome.result is not None:
        answers = outcome.result.responses["subscription_response"]
        outcome.require(answers <= 3 * 1024, f"{answers} SubscriptionResponses for 3 requests")
    outcome.verdict(DEFAULT_RSS_MB)


async def test_fd_leak_duplicate_identity_and_failed_publishers(stage: Stage) -> None:
    """(3, 4) 10 duplicate-identity ghost offers and 4 publishers whose ICE never completes
    (held past the 20 s connect timeout), all dropped without LeaveRequest: FDs come back and
    no ghost stays in the room."""
    url = stage.sfu.url

    async def attack() -> hostile.AttackResult:
        ghosts = hostile.duplicate_identity_ghost(url, stage.token)
        stuck = [
            hostile.unconnectable_publisher(url, stage.token(f"hostile-stuck-{n}"), hold_s=24)
            for n in range(4)
        ]
        results = await asyncio.gather(ghosts, *stuck)
        merged = results[0]
        merged.notes["server_left_stuck"] = sum(r.notes.get("server_left", 0) for r in results[1:])
        return merged

    outcome = await run_attack(stage, "3/4 fd_leak", attack, settle_s=3.0)
    ghosts = [
        identity
        for identity, p in stage.bob.room.remote_participants.items()
        if identity.startswith("hostile-") and p.track_publications
    ]
    outcome.require(not ghosts, f"bob still sees tracks of {ghosts}")
    outcome.verdict(DEFAULT_RSS_MB)
