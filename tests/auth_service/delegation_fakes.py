"""Stand-ins for delayed-leave delegation tests: a fake clock, the homeserver and SFU seams, and
an in-memory job store."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from auth_service.cs_api import Action, ActionResult, CsApi, CsApiUnresolvable, Outcome
from auth_service.job_store import StoredJob
from auth_service.sfu_client import RoomServiceError

WALL_EPOCH = 1_700_000_000.0


async def settle(rounds: int = 50) -> None:
    """Let every task that can run, run."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """Time that moves only when a test calls :meth:`advance`."""

    def __init__(self) -> None:
        self.t = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    def wall(self) -> float:
        return WALL_EPOCH + self.t

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + max(0.0, seconds), next(self._seq), future))
        await future

    async def advance(self, seconds: float) -> None:
        target = self.t + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self.t = max(self.t, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self.t = target
        await settle()


@dataclass
class FakeDeps:
    """The homeserver and the SFU: scripted answers, every call recorded."""

    present: set[tuple[str, str]] = field(default_factory=set)
    sfu_down: bool = False
    results: dict[Action, list[ActionResult]] = field(default_factory=dict)
    unresolvable: bool = False
    calls: list[tuple[Action, str, float]] = field(default_factory=list)
    lookups: int = 0
    clock: FakeClock | None = None

    async def participant_exists(self, room: str, identity: str) -> bool:
        self.lookups += 1
        if self.sfu_down:
            raise RoomServiceError("the SFU is down")
        return (room, identity) in self.present

    async def participant_identities(self, room: str) -> frozenset[str]:
        if self.sfu_down:
            raise RoomServiceError("the SFU is down")
        return frozenset(i for r, i in self.present if r == room)

    async def resolve_cs_api(self, server_name: str) -> CsApi:
        if self.unresolvable:
            raise CsApiUnresolvable(f"nothing for {server_name}")
        return CsApi(f"https://{server_name}", trusted=True)

    async def execute(self, cs_api: CsApi, delay_id: str, action: Action) -> ActionResult:
        self.calls.append((action, delay_id, self.clock.now() if self.clock else 0.0))
        scripted = self.results.get(action)
        if scripted:
            return scripted.pop(0)
        return ActionResult(Outcome.OK, 200)

    def actions(self) -> list[Action]:
        return [action for action, _, _ in self.calls]


class MemoryStore:
    """A job store in a dict (the Redis store is tested against redis-server)."""

    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], StoredJob] = {}
        self.closed = False

    async def save(self, job: StoredJob) -> None:
        self.jobs[job.params.key] = job

    async def delete(self, key: tuple[str, str]) -> None:
        self.jobs.pop(key, None)

    async def load(self, limit: int) -> list[StoredJob]:
        return list(self.jobs.values())[:limit]

    async def close(self) -> None:
        self.closed = True
