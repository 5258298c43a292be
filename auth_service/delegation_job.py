"""One delegated delayed leave (MSC4140): the state machine lk-jwt-service runs per participant.

A client that schedules its leave (the call-membership state event emptied) as a delayed event
hands its ``delay_id`` over with its token request. From then on a :class:`Job` keeps that event
from firing while the participant is connected to the SFU, and fires it the moment they are not:

* ``WAITING_FOR_INITIAL_CONNECT``: wait for the SFU's ``participant_joined`` webhook, or find the
  participant with ``GetParticipant`` (backoff 1 s ×1.5, jittered ±50 %, at most 60 s apart), for
  at most ``min(delay_timeout, 1 h)``; a connection aborted before connecting ends the job
  without sending (``ABORTED``), running out of time sends the leave (``DISCONNECTED``).
* ``CONNECTED``: restart the delayed event at once, then every 80 % of ``delay_timeout``, each
  restart retried (same backoff, a 429's wait honoured) until the event would fire. A clean
  leave, an aborted connection, or the SFU no longer listing the participant sends the leave
  (``DISCONNECTED``); a restart answered 404 (the event is gone), one that kept failing until
  the deadline, or a homeserver whose client-server API cannot be found end the job
  (``ABORTED``).
* ``DISCONNECTED``: ``send`` the delayed event, retried until the time it would have fired
  anyway (at least 1 s, at most 1 h); 404 means it was already sent or cancelled.
* ``REPLACED``: a newer job for the same (room, identity) took over; nothing more is done.

The table :data:`TRANSITIONS` is the whole machine; a signal a state does not list is ignored
(late timers, duplicate webhooks). Time comes from an injectable :class:`Clock`; the homeserver
and the SFU are reached through :class:`JobDeps`, so the machine is tested without either.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Final, Protocol

from .cs_api import Action, ActionResult, CsApi, CsApiUnresolvable, Outcome
from .sfu_client import RoomServiceError

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS: Final = 3600.0
"""No job waits for a first connect, or retries a send, longer (the sticky-event lifetime)."""
RESTART_FRACTION: Final = 0.8
BACKOFF_INITIAL: Final = 1.0
BACKOFF_MULTIPLIER: Final = 1.5
BACKOFF_JITTER: Final = 0.5
BACKOFF_MAX: Final = 60.0
SIGNAL_QUEUE: Final = 32


class Clock(Protocol):
    """Monotonic and wall time, and sleeping (tests inject a fake one)."""

    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def wall(self) -> float:
        """Unix seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def wall(self) -> float:
        """``time.time()``."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(seconds)


class State(enum.Enum):
    """Where a job is in its life."""

    WAITING_FOR_INITIAL_CONNECT = "waiting_for_initial_connect"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ABORTED = "aborted"
    REPLACED = "replaced"


class Signal(enum.Enum):
    """What can happen to a job."""

    PARTICIPANT_CONNECTED = "participant_connected"  # webhook participant_joined
    LOOKUP_SUCCESSFUL = "lookup_successful"  # GetParticipant found them
    DISCONNECTED_INTENTIONALLY = "disconnected_intentionally"  # left, CLIENT_INITIATED
    CONNECTION_ABORTED = "connection_aborted"  # left or aborted for any other reason
    PARTICIPANT_GONE = "participant_gone"  # the SFU no longer lists them
    WAITING_TIMED_OUT = "waiting_timed_out"
    RESTART_TIMED_OUT = "restart_timed_out"
    RESTART_NOT_FOUND = "restart_not_found"
    CS_API_NOT_FOUND = "cs_api_not_found"


_W, _C = State.WAITING_FOR_INITIAL_CONNECT, State.CONNECTED
TRANSITIONS: Final[dict[tuple[State, Signal], State]] = {
    (_W, Signal.PARTICIPANT_CONNECTED): _C,
    (_W, Signal.LOOKUP_SUCCESSFUL): _C,
    (_W, Signal.CONNECTION_ABORTED): State.ABORTED,
    (_W, Signal.WAITING_TIMED_OUT): State.DISCONNECTED,
    (_C, Signal.DISCONNECTED_INTENTIONALLY): State.DISCONNECTED,
    (_C, Signal.CONNECTION_ABORTED): State.DISCONNECTED,
    (_C, Signal.PARTICIPANT_GONE): State.DISCONNECTED,
    (_C, Signal.RESTART_TIMED_OUT): State.ABORTED,
    (_C, Signal.RESTART_NOT_FOUND): State.ABORTED,
    (_C, Signal.CS_API_NOT_FOUND): State.ABORTED,
}
TERMINAL: Final = frozenset({State.DISCONNECTED, State.ABORTED, State.REPLACED})


@dataclass(frozen=True)
class JobParams:
    """What a delegation hands over (the stored part of a job)."""

    delay_id: str
    delay_timeout: float  # seconds
    server_name: str  # whose client-server API holds the delayed event
    room: str  # LiveKit room name
    identity: str  # LiveKit identity

    @property
    def key(self) -> tuple[str, str]:
        """One job per (room, identity)."""
        return (self.room, self.identity)


class JobDeps(Protocol):
    """The homeserver and the SFU, as a job reaches them."""

    async def participant_exists(self, room: str, identity: str) -> bool:
        """Raises :class:`RoomServiceError` when the SFU cannot say."""
        ...

    async def resolve_cs_api(self, server_name: str) -> CsApi:
        """Raises :class:`CsApiUnresolvable`."""
        ...

    async def execute(self, cs_api: CsApi, delay_id: str, action: Action) -> ActionResult:
        """One attempt; never raises for network or HTTP failures."""
        ...


def backoff(rng: random.Random) -> Iterator[float]:
    """Upstream's waits: 1 s growing ×1.5 up to 60 s, each jittered by ±50 %."""
    interval = BACKOFF_INITIAL
    while True:
        yield rng.uniform(interval * (1 - BACKOFF_JITTER), interval * (1 + BACKOFF_JITTER))
        interval = min(interval * BACKOFF_MULTIPLIER, BACKOFF_MAX)


async def retry_action(
    attempt: Callable[[], Awaitable[ActionResult]],
    budget: float,
    clock: Clock,
    rng: random.Random,
) -> ActionResult:
    """Attempt until OK or NOT_FOUND, or until the next wait would end after ``budget`` s."""
    started = clock.now()
    waits = backoff(rng)
    while True:
        result = await attempt()
        if result.outcome in (Outcome.OK, Outcome.NOT_FOUND):
            return result
        wait = result.retry_after if result.outcome is Outcome.RETRY_AFTER else next(waits)
        if clock.now() - started + wait > budget:
            return result
        await clock.sleep(wait)


class Job:
    """One delegated delayed leave; see the module docstring. Driven by :meth:`run`."""

    def __init__(
        self,
        params: JobParams,
        deps: JobDeps,
        *,
        clock: Clock,
        on_done: Callable[[Job], None],
        on_restarted: Callable[[Job], None],
        user_id: str = "",
        rng: random.Random | None = None,
        restored_deadline: float | None = None,
    ) -> None:
        self.params = params
        self.user_id = user_id
        self.state = State.WAITING_FOR_INITIAL_CONNECT
        self.restarted_at = clock.wall()
        self._deps = deps
        self._clock = clock
        self._on_done = on_done
        self._on_restarted = on_restarted
        self._rng = rng or random.Random()
        self._signals: asyncio.Queue[Signal] = asyncio.Queue(SIGNAL_QUEUE)
        self._deadline: float | None = None  # monotonic time the delayed event fires
        self._restored_deadline = restored_deadline
        self._helpers: dict[str, asyncio.Task[None]] = {}
        self.task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        p = self.params
        return f"<Job room={p.room!r} identity={p.identity!r} delay_id={p.delay_id!r} {self.state.value}>"

    def start(self) -> None:
        """Run the job in a task of its own."""
        self.task = asyncio.get_running_loop().create_task(self.run(), name=repr(self))

    def signal(self, signal: Signal) -> None:
        """Hand ``signal`` to the job (dropped, and logged, if its queue is full)."""
        try:
            self._signals.put_nowait(signal)
        except asyncio.QueueFull:
            log.warning("%r: signal queue full, dropping %s", self, signal.value)

    def replace(self) -> None:
        """A newer job took over: stop at once, sending nothing."""
        self.state = State.REPLACED
        self.stop()

    def stop(self) -> None:
        """Cancel the job (shutdown or replacement); a stored job is resumed by the next run."""
        if self.task is not None:
            self.task.cancel()

    # --- the machine ------------------------------------------------------------------

    def _spawn(self, name: str, coroutine: Coroutine[None, None, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        task.add_done_callback(lambda done: self._helper_done(name, done))
        self._helpers[name] = task

    def _helper_done(self, name: str, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%r: %s failed", self, name, exc_info=task.exception())

    def _cancel(self, name: str) -> None:
        helper = self._helpers.pop(name, None)
        if helper is not None:
            helper.cancel()

    async def run(self) -> None:
        """The job's life: signals in, the table decides, entry and exit actions act."""
        try:
            if self._restored_deadline is not None:
                # Resumed after a restart of the service while the participant was connected:
                # check they still are, then carry on restarting.
                self._enter_connected(self._restored_deadline)
                self._spawn("presence", self._presence_check())
            else:
                waiting = min(self.params.delay_timeout, MAX_WAIT_SECONDS)
                self._spawn("waiting_timer", self._after(waiting, Signal.WAITING_TIMED_OUT))
                self._spawn("lookup", self._lookup(waiting))
            while self.state not in TERMINAL:
                signal = await self._signals.get()
                following = TRANSITIONS.get((self.state, signal))
                if following is None:
                    log.debug("%r: ignoring %s", self, signal.value)
                    continue
                log.info("%r: %s → %s", self, signal.value, following.value)
                self._exit(self.state)
                self.state = following
                if following is State.CONNECTED:
                    self._enter_connected(self._clock.now() + self.params.delay_timeout)
                elif following is State.DISCONNECTED:
                    await self._send()
            self._on_done(self)
        finally:
            for name in list(self._helpers):
                self._cancel(name)

    def _exit(self, state: State) -> None:
        if state is State.WAITING_FOR_INITIAL_CONNECT:
            self._cancel("waiting_timer")
            self._cancel("lookup")
        elif state is State.CONNECTED:
            self._cancel("keep_alive")
            self._cancel("presence")

    def _enter_connected(self, deadline: float) -> None:
        self.state = State.CONNECTED
        self._deadline = deadline
        self._spawn("keep_alive", self._keep_alive())

    async def _after(self, seconds: float, signal: Signal) -> None:
        await self._clock.sleep(seconds)
        self.signal(signal)

    async def _lookup(self, budget: float) -> None:
        """Find the participant on the SFU (their joined webhook may have gone before us)."""
        started = self._clock.now()
        waits = backoff(self._rng)
        while True:
            try:
                if await self._deps.participant_exists(*self.params.key):
                    self.signal(Signal.LOOKUP_SUCCESSFUL)
                    return
            except RoomServiceError as exc:
                log.debug("%r: lookup failed: %s", self, exc)
            wait = next(waits)
            if self._clock.now() - started + wait > budget:
                return
            await self._clock.sleep(wait)

    async def _presence_check(self) -> None:
        """One look for a resumed job: a participant the SFU confirms gone is gone."""
        try:
            present = await self._deps.participant_exists(*self.params.key)
        except RoomServiceError as exc:
            log.warning("%r: presence check failed, carrying on: %s", self, exc)
            return
        if not present:
            self.signal(Signal.PARTICIPANT_GONE)

    async def _keep_alive(self) -> None:
        """Restart the delayed event now and every 80 % of its timeout, before it fires."""
        assert self._deadline is not None
        while True:
            remaining = self._deadline - self._clock.now()
            if remaining <= 0:
                self.signal(Signal.RESTART_TIMED_OUT)
                return
            try:
                cs_api = await self._deps.resolve_cs_api(self.params.server_name)
            except CsApiUnresolvable as exc:
                log.warning("%r: %s", self, exc)
                self.signal(Signal.CS_API_NOT_FOUND)
                return
            result = await retry_action(
                lambda cs_api=cs_api: self._deps.execute(  # type: ignore[misc]
                    cs_api, self.params.delay_id, Action.RESTART
                ),
                remaining,
                self._clock,
                self._rng,
            )
            if result.outcome is Outcome.NOT_FOUND:
                log.warning("%r: the delayed event is gone (restart answered 404)", self)
                self.signal(Signal.RESTART_NOT_FOUND)
                return
            if result.outcome is not Outcome.OK:
                log.warning("%r: restart kept failing: %s", self, result.detail)
                self.signal(Signal.RESTART_TIMED_OUT)
                return
            self._deadline = self._clock.now() + self.params.delay_timeout
            self.restarted_at = self._clock.wall()
            self._on_restarted(self)
            await self._clock.sleep(self.params.delay_timeout * RESTART_FRACTION)

    async def _send(self) -> None:
        """Send the leave, retrying until it would have fired anyway."""
        until = 0.0 if self._deadline is None else self._deadline - self._clock.now()
        budget = min(MAX_WAIT_SECONDS, max(1.0, until))
        try:
            cs_api = await self._deps.resolve_cs_api(self.params.server_name)
        except CsApiUnresolvable as exc:
            log.warning("%r: cannot send the leave: %s", self, exc)
            return
        result = await retry_action(
            lambda: self._deps.execute(cs_api, self.params.delay_id, Action.SEND),
            budget,
            self._clock,
            self._rng,
        )
        if result.outcome is Outcome.OK:
            already = " (it was already sent or cancelled)" if result.status == 404 else ""
            log.info("%r: sent the delayed leave%s", self, already)
        else:
            log.warning("%r: could not send the delayed leave: %s", self, result.detail)
