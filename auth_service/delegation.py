"""Delayed-leave delegation: the table of jobs (one per LiveKit room and identity) and what
feeds them.

* :meth:`Delegations.add` starts a job for a delegation handed over with a token request or on
  ``/delegate_delayed_leave``, replacing the job of the same (room, identity); with a store it
  answers only once the job is written. The table is bounded: at most ``max_jobs`` jobs, and at
  most ``max_jobs_per_user`` for one Matrix user (:class:`DelegationLimit` beyond either).
* :meth:`Delegations.webhook` routes the SFU's ``participant_joined``, ``participant_left`` and
  ``participant_connection_aborted`` to the job they concern (a ``CLIENT_INITIATED`` disconnect
  is an intentional leave, any other reason an aborted connection, as upstream reads them).
* With ``sanity_interval`` > 0 a poller asks the SFU every so often, with one
  ``ListParticipants`` per room, who is still there; a connected job whose participant is not
  listed sends its leave (the backstop for a lost webhook). Errors are ignored until next time.
* With a store (:mod:`auth_service.job_store`) every job is written when it starts, when its
  event is restarted (so also once it is connected), and deleted when it ends; :meth:`start` resumes the
  stored ones, dropping those whose event has fired by now. Writes go through one writer task
  in order; a failed write is logged and the job carries on in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Final

from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from .cs_api import Action, ActionResult, CsApi, CsApiResolver, DelayedEvents
from .delegation_job import Clock, Job, JobParams, Signal, State, SystemClock
from .job_store import JobStore, StoredJob, StoreError
from .metrics import Metrics
from .sfu_client import ParticipantDirectory, RoomServiceError

log = logging.getLogger(__name__)

DEFAULT_MAX_JOBS: Final = 10_000
DEFAULT_MAX_JOBS_PER_USER: Final = 20
STORE_QUEUE: Final = 256


class DelegationLimit(Exception):
    """The job table (or one user's share of it) is full."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class ServiceDeps:
    """The real :class:`~auth_service.delegation_job.JobDeps`: the SFU and the homeservers."""

    def __init__(
        self, sfu: ParticipantDirectory, resolver: CsApiResolver, events: DelayedEvents
    ) -> None:
        self.sfu = sfu
        self.resolver = resolver
        self.events = events

    async def participant_exists(self, room: str, identity: str) -> bool:
        """``GetParticipant`` on the SFU."""
        return await self.sfu.participant_exists(room, identity)

    async def participant_identities(self, room: str) -> frozenset[str]:
        """``ListParticipants`` on the SFU."""
        return await self.sfu.participant_identities(room)

    async def resolve_cs_api(self, server_name: str) -> CsApi:
        """The homeserver's client-server API."""
        return await self.resolver.resolve(server_name)

    async def execute(self, cs_api: CsApi, delay_id: str, action: Action) -> ActionResult:
        """One restart or send."""
        return await self.events.execute(cs_api, delay_id, action)


@dataclass
class _Write:
    stored: StoredJob | None  # None: delete
    key: tuple[str, str]
    done: asyncio.Future[None] | None = None


def webhook_signal(event: WebhookEvent) -> tuple[tuple[str, str], Signal] | None:
    """The job key and signal a webhook event means, if any."""
    if not event.HasField("room") or not event.HasField("participant"):
        return None
    key = (event.room.name, event.participant.identity)
    if event.event == "participant_joined":
        return key, Signal.PARTICIPANT_CONNECTED
    if event.event in ("participant_left", "participant_connection_aborted"):
        intentional = event.participant.disconnect_reason == models.CLIENT_INITIATED
        return key, (
            Signal.DISCONNECTED_INTENTIONALLY if intentional else Signal.CONNECTION_ABORTED
        )
    return None


class Delegations:
    """The job table; see the module docstring."""

    def __init__(
        self,
        deps: ServiceDeps,
        *,
        store: JobStore | None = None,
        sanity_interval: float = 0.0,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_jobs_per_user: int = DEFAULT_MAX_JOBS_PER_USER,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.deps = deps
        self.store = store
        self.sanity_interval = sanity_interval
        self.max_jobs = max_jobs
        self.max_jobs_per_user = max_jobs_per_user
        self.clock: Clock = clock or SystemClock()
        self.metrics = metrics
        self.jobs: dict[tuple[str, str], Job] = {}
        self._per_user: Counter[str] = Counter()
        self._writes: asyncio.Queue[_Write] = asyncio.Queue(STORE_QUEUE)
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # --- life -------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume stored jobs and start the store writer and the sanity poller."""
        if self._started:
            return
        self._started = True
        loop = asyncio.get_running_loop()
        if self.store is not None:
            await self._resume(self.store)
            self._tasks.append(loop.create_task(self._write_loop(self.store)))
        if self.sanity_interval > 0:
            self._tasks.append(loop.create_task(self._sanity_loop()))

    async def close(self) -> None:
        """Stop every job (stored ones resume on the next start) and the background tasks."""
        jobs = list(self.jobs.values())
        for job in jobs:
            job.stop()
        await asyncio.gather(*(j.task for j in jobs if j.task is not None), return_exceptions=True)
        if self.store is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._writes.join()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.store is not None:
            await self.store.close()

    async def _resume(self, store: JobStore) -> None:
        try:
            stored = await store.load(self.max_jobs)
        except StoreError as exc:
            log.error("cannot load the stored delegated leaves: %s", exc)
            return
        now_wall = self.clock.wall()
        resumed = 0
        for entry in stored:
            fires_at = entry.restarted_at + entry.params.delay_timeout
            if fires_at <= now_wall:
                log.info("dropping the stored job of %r: its event has fired", entry.params.key)
                await self._write_now(store, _Write(None, entry.params.key))
                continue
            deadline = self.clock.now() + (fires_at - now_wall) if entry.connected else None
            self._install(self._new_job(entry.params, "", restored_deadline=deadline))
            resumed += 1
        log.info("resumed %d delegated delayed leaves", resumed)

    # --- the table --------------------------------------------------------------------

    def _new_job(
        self, params: JobParams, user_id: str, restored_deadline: float | None = None
    ) -> Job:
        return Job(
            params,
            self.deps,
            clock=self.clock,
            on_done=self._done,
            on_restarted=self._restarted,
            user_id=user_id,
            restored_deadline=restored_deadline,
        )

    def _install(self, job: Job) -> None:
        old = self.jobs.get(job.params.key)
        if old is not None:
            log.info("%r replaced by a new delegation", old)
            self._forget(old)
            old.replace()
        self.jobs[job.params.key] = job
        self._per_user[job.user_id] += 1
        job.start()

    def _forget(self, job: Job) -> None:
        if self.jobs.get(job.params.key) is job:
            del self.jobs[job.params.key]
            self._per_user[job.user_id] -= 1
            if self._per_user[job.user_id] <= 0:
                del self._per_user[job.user_id]

    def _limit_hit(self, name: str) -> None:
        if self.metrics is not None:
            self.metrics.limit_hit(name)

    async def add(self, params: JobParams, user_id: str) -> None:
        """Start the job of a delegation (replacing that of the same key); see the module
        docstring. Raises :class:`DelegationLimit` when the table is full."""
        await self.start()
        replacing = params.key in self.jobs
        if not replacing and len(self.jobs) >= self.max_jobs:
            self._limit_hit("auth_delegated_leaves")
            raise DelegationLimit(
                f"This service already watches {self.max_jobs} delegated leaves",
                "auth_delegated_leaves",
            )
        mine = self._per_user[user_id] - (
            1 if replacing and self.jobs[params.key].user_id == user_id else 0
        )
        if user_id and mine >= self.max_jobs_per_user:
            self._limit_hit("auth_delegated_leaves_per_user")
            raise DelegationLimit(
                f"At most {self.max_jobs_per_user} delegated leaves per user",
                "auth_delegated_leaves_per_user",
            )
        job = self._new_job(params, user_id)
        self._install(job)
        if self.store is not None:
            done = asyncio.get_running_loop().create_future()
            await self._writes.put(_Write(self._stored(job), params.key, done))
            await done

    def webhook(self, event: WebhookEvent) -> bool:
        """Route a verified webhook event; whether a job took it."""
        routed = webhook_signal(event)
        if routed is None:
            return False
        job = self.jobs.get(routed[0])
        if job is None:
            return False
        job.signal(routed[1])
        return True

    def _stored(self, job: Job) -> StoredJob:
        return StoredJob(job.params, job.restarted_at, job.state is State.CONNECTED)

    def _restarted(self, job: Job) -> None:
        """A job restarted its event (so it is connected): write when, for a resume."""
        if self.store is None or self.jobs.get(job.params.key) is not job:
            return
        try:
            self._writes.put_nowait(_Write(self._stored(job), job.params.key))
        except asyncio.QueueFull:
            self._limit_hit("auth_job_store_queue")
            log.warning("the job store is behind; not writing %r", job)

    def _done(self, job: Job) -> None:
        if self.jobs.get(job.params.key) is not job:
            return
        self._forget(job)
        log.info("%r done", job)
        if self.store is not None:
            try:
                self._writes.put_nowait(_Write(None, job.params.key))
            except asyncio.QueueFull:
                self._limit_hit("auth_job_store_queue")
                log.warning("the job store is behind; %r stays stored until it expires", job)

    # --- background -------------------------------------------------------------------

    async def _write_now(self, store: JobStore, write: _Write) -> None:
        try:
            if write.stored is None:
                await store.delete(write.key)
            else:
                await store.save(write.stored)
        except StoreError as exc:
            log.error("job store: %s", exc)

    async def _write_loop(self, store: JobStore) -> None:
        while True:
            write = await self._writes.get()
            try:
                await self._write_now(store, write)
            finally:
                self._writes.task_done()
                if write.done is not None and not write.done.done():
                    write.done.set_result(None)

    async def _sanity_loop(self) -> None:
        while True:
            await self.clock.sleep(self.sanity_interval)
            await self.sanity_check()

    async def sanity_check(self) -> None:
        """One round of the backstop poll: one ``ListParticipants`` per room."""
        rooms: dict[str, list[Job]] = {}
        for job in self.jobs.values():
            if job.state is State.CONNECTED:
                rooms.setdefault(job.params.room, []).append(job)
        for room, jobs in rooms.items():
            try:
                present = await self.deps.participant_identities(room)
            except RoomServiceError as exc:
                log.warning("sanity check of room %r failed: %s", room, exc)
                continue
            for job in jobs:
                if job.params.identity not in present and self.jobs.get(job.params.key) is job:
                    log.warning("%r: the SFU no longer lists the participant", job)
                    job.signal(Signal.PARTICIPANT_GONE)
