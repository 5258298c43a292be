"""LiveKit webhooks: the events a room reports, signed and POSTed to each ``webhook.urls`` entry.

`WebhookNotifier` is the rooms' `RoomObserver`. It turns what happens into LiveKit's
``WebhookEvent``s (room_started, room_finished, participant_joined once a participant's
transport connects, participant_left, or participant_connection_aborted for one that never
connected, track_published, track_unpublished), each with an ``EV_`` id and ``created_at``.

Delivery never touches media or signalling: an event is encoded and put on a bounded queue per
URL without an await (`WEBHOOK_QUEUE` events; a full queue drops the event, counted as
``webhook_queue``, and the next delivered one says how many in ``num_dropped``). One task per
URL sends the queue in order, so each room's events arrive in the order they happened; a
failed POST (no answer within `WEBHOOK_TIMEOUT_S`, a network error, 429 or 5xx) is retried
`WEBHOOK_RETRIES` times with backoff, then dropped. The body is protojson; the
``Authorization`` header is an API JWT (valid 5 minutes) signed with ``webhook.api_key``'s
secret whose ``sha256`` claim is the base64 SHA-256 of the body, as LiveKit signs them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import httpx
import jwt
from google.protobuf import json_format
from livekit.protocol import models
from livekit.protocol.webhook import WebhookEvent

from sfu.ids import new_event_id
from sfu.metrics import COUNTERS

if TYPE_CHECKING:
    from sfu.room.participant import Participant
    from sfu.room.publication import PublishedTrack
    from sfu.room.room import Room

log = logging.getLogger(__name__)

#: events waiting per URL
WEBHOOK_QUEUE = 256
#: seconds one POST may take, connecting included
WEBHOOK_TIMEOUT_S = 5.0
#: further attempts after a failed POST, waiting 1, 2, 4 ... seconds between them
WEBHOOK_RETRIES = 3
#: seconds the token signing a webhook stays valid (LiveKit's)
TOKEN_TTL_S = 300
#: seconds shutdown waits for queued events to go out
DRAIN_TIMEOUT_S = 2.0
CONTENT_TYPE = "application/webhook+json"


def sign(body: bytes, api_key: str, api_secret: str, now: int | None = None) -> str:
    """The Authorization header value for `body`: LiveKit's API JWT with a ``sha256`` claim."""
    now = int(time.time()) if now is None else now
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    claims = {"iss": api_key, "nbf": now, "exp": now + TOKEN_TTL_S, "sha256": digest}
    return jwt.encode(claims, api_secret, algorithm="HS256")


class _Endpoint:
    """One URL: its queue, its sender task, and how many events it dropped since the last one
    that went out."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queue: asyncio.Queue[WebhookEvent] = asyncio.Queue(WEBHOOK_QUEUE)
        self.dropped = 0
        self.task: asyncio.Task[None] | None = None


class WebhookNotifier:
    """Queues each room event for every URL and sends the queues in the background."""

    def __init__(
        self,
        urls: tuple[str, ...],
        api_key: str,
        keys: Mapping[str, str],
        *,
        timeout_s: float = WEBHOOK_TIMEOUT_S,
        retries: int = WEBHOOK_RETRIES,
    ) -> None:
        self._endpoints = [_Endpoint(url) for url in urls]
        self._api_key = api_key
        self._secret = keys.get(api_key, "")
        self._timeout_s = timeout_s
        self._retries = retries
        #: participants announced as joined (their participant_left is then sent): sid → room sid
        self._joined: dict[str, str] = {}
        self._client: httpx.AsyncClient | None = None

    # -- lifetime -------------------------------------------------------------------------------
    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self._timeout_s, follow_redirects=False)
        for endpoint in self._endpoints:
            endpoint.task = asyncio.create_task(self._run(endpoint), name="webhook")

    async def close(self) -> None:
        """Give queued events `DRAIN_TIMEOUT_S` to go out, then stop."""
        pending = [e for e in self._endpoints if e.task is not None]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TIMEOUT_S):
                for endpoint in pending:
                    await endpoint.queue.join()
        for endpoint in pending:
            assert endpoint.task is not None
            endpoint.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await endpoint.task
        if self._client is not None:
            await self._client.aclose()

    # -- RoomObserver ---------------------------------------------------------------------------
    def room_started(self, room: Room) -> None:
        self._notify("room_started", room)

    def room_finished(self, room: Room) -> None:
        # one replaced without leaving (Room.join's "never left") is forgotten with its room
        self._joined = {p: r for p, r in self._joined.items() if r != room.sid}
        self._notify("room_finished", room)

    def participant_changed(self, room: Room, participant: Participant) -> None:
        active = participant.state == models.ParticipantInfo.State.ACTIVE
        if active and not participant.closed and participant.sid not in self._joined:
            self._joined[participant.sid] = room.sid
            self._notify("participant_joined", room, participant.info())

    def participant_left(self, room: Room, participant: Participant) -> None:
        if self._joined.pop(participant.sid, None) is not None:
            self._notify("participant_left", room, participant.info())
        else:
            self._notify("participant_connection_aborted", room, participant.info())

    def track_published(self, room: Room, participant: Participant, track: PublishedTrack) -> None:
        self._notify("track_published", room, _publisher(participant), track.info)

    def track_unpublished(
        self, room: Room, participant: Participant, track: PublishedTrack
    ) -> None:
        self._notify("track_unpublished", room, _publisher(participant), track.info)

    # -- queueing -------------------------------------------------------------------------------
    def _notify(
        self,
        name: str,
        room: Room,
        participant: models.ParticipantInfo | None = None,
        track: models.TrackInfo | None = None,
    ) -> None:
        if not self._endpoints:
            return
        event = WebhookEvent(
            event=name, room=room.info(), id=new_event_id(), created_at=int(time.time())
        )
        if participant is not None:
            event.participant.CopyFrom(participant)
        if track is not None:
            event.track.CopyFrom(track)
        for endpoint in self._endpoints:
            try:
                endpoint.queue.put_nowait(event)
            except asyncio.QueueFull:
                endpoint.dropped += 1
                COUNTERS.limit_exceeded("webhook_queue")
                if endpoint.dropped == 1:
                    log.warning("webhook %s: queue full, dropping events", endpoint.url)

    async def _run(self, endpoint: _Endpoint) -> None:
        while True:
            event = await endpoint.queue.get()
            try:
                await self._deliver(endpoint, event)
            except Exception:  # one bad event must not stop the URL's queue
                log.exception("webhook %s: %s not sent", endpoint.url, event.event)
            finally:
                endpoint.queue.task_done()

    async def _deliver(self, endpoint: _Endpoint, queued: WebhookEvent) -> None:
        event = WebhookEvent()
        event.CopyFrom(queued)  # the same event object is queued for every URL
        event.num_dropped, endpoint.dropped = endpoint.dropped, 0
        body = json_format.MessageToJson(event, indent=None).encode()
        assert self._client is not None
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(2 ** (attempt - 1))
            headers = {
                "Authorization": sign(body, self._api_key, self._secret),
                "Content-Type": CONTENT_TYPE,
            }
            try:
                response = await self._client.post(endpoint.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                why = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code < 500 and response.status_code != 429:
                    if response.status_code >= 400:
                        log.info(
                            "webhook %s: %s answered %d",
                            endpoint.url,
                            event.event,
                            response.status_code,
                        )
                    return
                why = f"HTTP {response.status_code}"
            log.info(
                "webhook %s: %s attempt %d failed (%s)", endpoint.url, event.event, attempt + 1, why
            )
        COUNTERS.limit_exceeded("webhook_retries")
        log.warning(
            "webhook %s: %s dropped after %d attempts", endpoint.url, event.event, self._retries + 1
        )


def _publisher(participant: Participant) -> models.ParticipantInfo:
    """Who published a track, as LiveKit names it in track events (sid and identity only)."""
    return models.ParticipantInfo(sid=participant.sid, identity=participant.identity)
