"""A ``/rtc`` request that reached a node other than its room's: route it, then relay it.

The node first checks what it can alone (the token, draining, its own session caps: the
caller's part), then asks `ClusterNode.route` where the room lives. Here: the session is served
as on a single node. Elsewhere: the session is relayed (`sfu.cluster.relay`) and holds one of
this node's session slots while it lasts. An owner that refuses the connection is forgotten and
the room placed again; one that does not answer is waited for (bounded) until its heartbeat
lapses; a second failure answers 503.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket

from sfu.cluster.node import ClusterNode, RouteError
from sfu.cluster.relay import Denied, OwnerUnreachable, Relays, deny, open_upstream, pipe

log = logging.getLogger(__name__)

#: routes tried for one request (the second after the first owner proved unreachable)
ROUTE_ATTEMPTS = 2
UNREACHABLE = "the room's node is unreachable; try again"


class SignalGateway:
    def __init__(
        self,
        cluster: ClusterNode,
        reserve: Callable[[], Callable[[], None]],
        max_message_size: int,
        relays: Relays,
    ) -> None:
        self.cluster = cluster
        self.relays = relays
        #: takes this node's session slots for a relayed session; returns their release
        self.reserve = reserve
        self.max_message_size = max_message_size

    async def serve(self, websocket: WebSocket, room: str, *, may_create: bool) -> bool:
        """True when the request was relayed or refused here; False: serve it locally."""
        for _ in range(ROUTE_ATTEMPTS):
            try:
                route = await self.cluster.route(room, may_create=may_create)
            except RouteError as exc:
                await _refuse(websocket, exc.status, exc.message)
                return True
            if route.local:
                return False
            client = websocket.client.host if websocket.client is not None else ""
            headers = self.cluster.relay_header(client)
            authorization = websocket.headers.get("authorization")
            if authorization:
                headers["authorization"] = authorization
            try:
                upstream = await open_upstream(
                    route.address, websocket.url.query, headers, self.max_message_size
                )
            except OwnerUnreachable as exc:
                log.info("room %s: its node %s is unreachable (%s)", room, route.node_id, exc)
                try:
                    await self.cluster.owner_unreachable(route, refused=exc.refused)
                except RouteError as error:
                    await _refuse(websocket, error.status, error.message)
                    return True
                continue
            if isinstance(upstream, Denied):
                await deny(websocket, upstream)
                return True
            try:
                release = self.reserve()
            except BaseException:
                with contextlib.suppress(Exception):
                    await upstream.close()
                raise
            try:
                await pipe(websocket, upstream, self.relays)
            finally:
                release()
            return True
        await _refuse(websocket, 503, UNREACHABLE)
        return True


async def _refuse(websocket: WebSocket, status: int, message: str) -> None:
    await websocket.send_denial_response(PlainTextResponse(message, status))
