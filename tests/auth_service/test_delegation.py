"""The delegated-leave job machine and its table, with a fake clock and fake homeserver/SFU."""

from __future__ import annotations

import pytest
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from auth_service.cs_api import Action, ActionResult, Outcome, classify
from auth_service.delegation import DelegationLimit, Delegations, webhook_signal
from auth_service.delegation_job import JobParams, Signal, State
from auth_service.job_store import StoredJob
from tests.auth_service.delegation_fakes import WALL_EPOCH, FakeClock, FakeDeps, MemoryStore, settle

T = 10.0  # delay_timeout, seconds
ROOM, ALICE = "room-1", "alice-identity"


def params(identity: str = ALICE, delay_id: str = "syd_1", timeout: float = T) -> JobParams:
    return JobParams(delay_id, timeout, "example.org", ROOM, identity)


def event(name: str, identity: str = ALICE, reason: int = 0) -> WebhookEvent:
    return WebhookEvent(
        event=name,
        room=models.Room(name=ROOM),
        participant=models.ParticipantInfo(identity=identity, disconnect_reason=reason),
    )


def table(**kwargs: object) -> tuple[Delegations, FakeDeps, FakeClock]:
    clock = FakeClock()
    deps = FakeDeps(clock=clock)
    return Delegations(deps, clock=clock, **kwargs), deps, clock  # type: ignore[arg-type]


async def test_connected_job_restarts_before_the_event_fires_and_sends_on_leave() -> None:
    jobs, deps, clock = table()
    await jobs.add(params(), "@alice:example.org")
    await clock.advance(0.1)
    assert deps.calls == []  # waiting for the participant
    assert jobs.webhook(event("participant_joined"))
    await clock.advance(0.1)
    assert deps.actions() == [Action.RESTART]  # at once
    await clock.advance(0.8 * T)
    assert deps.actions() == [Action.RESTART] * 2  # every 80 % of the timeout
    await clock.advance(0.8 * T)
    assert deps.actions() == [Action.RESTART] * 3
    jobs.webhook(event("participant_left", reason=models.CLIENT_INITIATED))
    await clock.advance(0.1)
    assert deps.actions() == [Action.RESTART] * 3 + [Action.SEND]
    assert jobs.jobs == {}


async def test_a_participant_who_never_connects_gets_the_leave_when_waiting_ends() -> None:
    jobs, deps, clock = table()
    await jobs.add(params(timeout=7200.0), "@a:x")
    await clock.advance(3599)
    assert deps.calls == []
    await clock.advance(2)  # min(delay_timeout, 1 h)
    assert deps.actions() == [Action.SEND]
    assert jobs.jobs == {}


async def test_aborted_before_connecting_ends_without_sending() -> None:
    jobs, deps, clock = table()
    await jobs.add(params(), "@a:x")
    jobs.webhook(event("participant_connection_aborted", reason=models.SIGNAL_CLOSE))
    await clock.advance(1)
    assert deps.calls == [] and jobs.jobs == {}


async def test_lookup_finds_a_participant_already_connected() -> None:
    jobs, deps, clock = table()
    await jobs.add(params(), "@a:x")
    await clock.advance(0.5)
    assert deps.lookups == 1 and deps.calls == []
    deps.present.add((ROOM, ALICE))
    await clock.advance(5)  # backoff 1 s x1.5 (jittered): found by now
    assert deps.actions() == [Action.RESTART]
    assert jobs.jobs[(ROOM, ALICE)].state is State.CONNECTED
    await jobs.close()


async def test_restart_404_aborts_without_sending() -> None:
    jobs, deps, clock = table()
    deps.results[Action.RESTART] = [ActionResult(Outcome.NOT_FOUND, 404)]
    await jobs.add(params(), "@a:x")
    jobs.webhook(event("participant_joined"))
    await clock.advance(1)
    assert deps.actions() == [Action.RESTART] and jobs.jobs == {}


async def test_429_waits_for_the_servers_hint() -> None:
    jobs, deps, clock = table()
    deps.results[Action.RESTART] = [ActionResult(Outcome.RETRY_AFTER, 429, retry_after=7.0)]
    await jobs.add(params(), "@a:x")
    jobs.webhook(event("participant_joined"))
    await clock.advance(6.9)
    assert len(deps.calls) == 1
    await clock.advance(0.2)
    assert [round(at, 1) for _, _, at in deps.calls] == [0.0, 7.0]
    await jobs.close()


async def test_a_restart_failing_until_the_deadline_aborts() -> None:
    jobs, deps, clock = table()
    deps.results[Action.RESTART] = [ActionResult(Outcome.TRANSIENT, 503)] * 100
    await jobs.add(params(), "@a:x")
    jobs.webhook(event("participant_joined"))
    await clock.advance(T + 1)
    assert set(deps.actions()) == {Action.RESTART} and len(deps.calls) >= 3
    assert jobs.jobs == {}


async def test_send_is_retried_on_5xx_and_404_counts_as_sent() -> None:
    jobs, deps, clock = table()
    deps.results[Action.SEND] = [
        ActionResult(Outcome.TRANSIENT, 502),
        ActionResult(Outcome.TRANSIENT, 0),
        ActionResult(Outcome.OK, 404),
    ]
    await jobs.add(params(), "@a:x")
    jobs.webhook(event("participant_joined"))
    await clock.advance(1)
    jobs.webhook(event("participant_left", reason=models.SIGNAL_CLOSE))
    await clock.advance(T)
    assert deps.actions() == [Action.RESTART] + [Action.SEND] * 3
    assert jobs.jobs == {}


async def test_a_new_delegation_replaces_the_old_job_which_sends_nothing() -> None:
    jobs, deps, clock = table()
    await jobs.add(params(delay_id="old"), "@a:x")
    jobs.webhook(event("participant_joined"))
    await clock.advance(1)
    await jobs.add(params(delay_id="new"), "@a:x")
    jobs.webhook(event("participant_joined"))
    await clock.advance(1)
    jobs.webhook(event("participant_left", reason=models.CLIENT_INITIATED))
    await clock.advance(1)
    assert deps.calls[-1][:2] == (Action.SEND, "new")
    assert [c[1] for c in deps.calls if c[0] is Action.SEND] == ["new"]


async def test_the_sanity_poll_catches_a_lost_leave_webhook() -> None:
    jobs, deps, clock = table(sanity_interval=30.0)
    deps.present.add((ROOM, ALICE))
    await jobs.add(params(timeout=3600.0), "@a:x")
    await clock.advance(1)
    assert deps.actions() == [Action.RESTART]
    await clock.advance(30)
    assert deps.actions() == [Action.RESTART]  # still listed
    deps.present.clear()  # gone, and the webhook lost
    await clock.advance(30)
    assert deps.actions() == [Action.RESTART, Action.SEND]
    await jobs.close()


async def test_the_sfu_being_down_is_not_a_leave() -> None:
    jobs, deps, clock = table(sanity_interval=5.0)
    deps.present.add((ROOM, ALICE))
    await jobs.add(params(timeout=3600.0), "@a:x")
    await clock.advance(1)
    deps.sfu_down = True
    await clock.advance(60)
    assert deps.actions() == [Action.RESTART]
    await jobs.close()


async def test_unresolvable_client_server_api_aborts() -> None:
    jobs, deps, clock = table()
    await jobs.add(params(), "@a:x")
    deps.unresolvable = True
    jobs.webhook(event("participant_joined"))
    await clock.advance(1)
    assert deps.calls == [] and jobs.jobs == {}


async def test_the_table_is_bounded() -> None:
    jobs, _deps, _clock = table(max_jobs=3, max_jobs_per_user=2)
    await jobs.add(params("a1"), "@a:x")
    await jobs.add(params("a2"), "@a:x")
    await jobs.add(params("a2", delay_id="again"), "@a:x")  # a replacement is not one more
    with pytest.raises(DelegationLimit) as per_user:
        await jobs.add(params("a3"), "@a:x")
    assert per_user.value.limit == "auth_delegated_leaves_per_user"
    await jobs.add(params("b1"), "@b:x")
    with pytest.raises(DelegationLimit) as full:
        await jobs.add(params("c1"), "@c:x")
    assert full.value.limit == "auth_delegated_leaves"
    assert len(jobs.jobs) == 3
    await jobs.close()


async def test_jobs_survive_a_restart_through_the_store() -> None:
    store = MemoryStore()
    jobs, deps, clock = table(store=store)
    await jobs.add(params(), "@a:x")
    assert store.jobs[(ROOM, ALICE)].connected is False
    jobs.webhook(event("participant_joined"))
    await clock.advance(1)
    assert store.jobs[(ROOM, ALICE)].connected is True
    await jobs.close()  # the service stops; the job stays stored
    assert (ROOM, ALICE) in store.jobs and deps.actions() == [Action.RESTART]

    # The next run resumes it: the participant is gone by now, so the leave goes out.
    resumed, deps2, clock2 = table(store=store)
    await resumed.start()
    await clock2.advance(1)
    assert deps2.actions() == [Action.RESTART, Action.SEND]
    assert store.jobs == {}


async def test_a_resumed_job_whose_participant_is_still_there_carries_on() -> None:
    store = MemoryStore()
    store.jobs[(ROOM, ALICE)] = StoredJob(params(), WALL_EPOCH - 2.0, connected=True)
    store.jobs[(ROOM, "expired")] = StoredJob(params("expired"), WALL_EPOCH - 60.0, True)
    jobs, deps, clock = table(store=store)
    deps.present.add((ROOM, ALICE))
    await jobs.start()
    await clock.advance(0.5)
    assert deps.actions() == [Action.RESTART]
    assert list(store.jobs) == [(ROOM, ALICE)]  # the expired one is dropped
    jobs.webhook(event("participant_left", reason=models.CLIENT_INITIATED))
    await clock.advance(0.5)
    assert deps.actions() == [Action.RESTART, Action.SEND]
    await settle()
    assert store.jobs == {}


def test_webhook_events_map_to_signals_as_upstream_reads_them() -> None:
    key = (ROOM, ALICE)
    assert webhook_signal(event("participant_joined")) == (key, Signal.PARTICIPANT_CONNECTED)
    left = event("participant_left", reason=models.CLIENT_INITIATED)
    assert webhook_signal(left) == (key, Signal.DISCONNECTED_INTENTIONALLY)
    dropped = event("participant_left", reason=models.SIGNAL_CLOSE)
    assert webhook_signal(dropped) == (key, Signal.CONNECTION_ABORTED)
    assert webhook_signal(event("track_published")) is None
    assert webhook_signal(WebhookEvent(event="participant_joined")) is None


@pytest.mark.parametrize(
    ("action", "status", "headers", "body", "outcome", "wait"),
    [
        (Action.RESTART, 200, {}, b"", Outcome.OK, 0.0),
        (Action.SEND, 204, {}, b"", Outcome.OK, 0.0),
        (Action.SEND, 404, {}, b"", Outcome.OK, 0.0),
        (Action.RESTART, 404, {}, b"", Outcome.NOT_FOUND, 0.0),
        (Action.RESTART, 429, {"retry-after": "3"}, b"", Outcome.RETRY_AFTER, 3.0),
        (Action.RESTART, 429, {}, b'{"retry_after_ms": 1500}', Outcome.RETRY_AFTER, 2.0),
        (
            Action.SEND,
            429,
            {"retry-after": "Tue, 14 Nov 2023 22:13:30 GMT"},
            b"",
            Outcome.RETRY_AFTER,
            10.0,
        ),
        (Action.RESTART, 429, {}, b"not json", Outcome.TRANSIENT, 0.0),
        (Action.RESTART, 503, {}, b"", Outcome.TRANSIENT, 0.0),
        (Action.SEND, 400, {}, b"", Outcome.TRANSIENT, 0.0),
    ],
)
def test_answers_are_classified_as_upstream_does(
    action: Action,
    status: int,
    headers: dict[str, str],
    body: bytes,
    outcome: Outcome,
    wait: float,
) -> None:
    result = classify(action, status, headers, body, now=1_700_000_000.0)
    assert (result.outcome, result.retry_after) == (outcome, wait)
