"""RoomService on any node: each Twirp call goes to the node of the room it names.

A call for one room (every method but ListRooms) is answered by that room's node: here, or
forwarded as it came (path, body, ``Authorization``, ``Content-Type``, plus the relay header so
the owner answers it itself) and its answer returned as it is. CreateRoom for a room with no
live owner places the room first (`ClusterNode.route`). ListRooms asks every live node and
merges their rooms. The caller's token is checked here before anything is forwarded, so an
unauthenticated request costs the cluster nothing; the owner checks the grants.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
from google.protobuf import json_format
from livekit.protocol import room as room_pb
from starlette.requests import Request
from starlette.responses import Response

from sfu.api.twirp import JSON, TwirpError, decode, read_body
from sfu.auth import AuthError, TokenVerifier
from sfu.cluster.node import RELAY_HEADER, ClusterNode, RouteError

log = logging.getLogger(__name__)

#: seconds a forwarded call may take
FORWARD_TIMEOUT_S = 10.0
#: the request type of each method and the field that names its room
ROOM_FIELD = {
    "CreateRoom": (room_pb.CreateRoomRequest, "name"),
    "DeleteRoom": (room_pb.DeleteRoomRequest, "room"),
    "ListParticipants": (room_pb.ListParticipantsRequest, "room"),
    "GetParticipant": (room_pb.RoomParticipantIdentity, "room"),
    "RemoveParticipant": (room_pb.RoomParticipantIdentity, "room"),
    "MutePublishedTrack": (room_pb.MuteRoomTrackRequest, "room"),
    "UpdateParticipant": (room_pb.UpdateParticipantRequest, "room"),
    "UpdateSubscriptions": (room_pb.UpdateSubscriptionsRequest, "room"),
    "SendData": (room_pb.SendDataRequest, "room"),
    "UpdateRoomMetadata": (room_pb.UpdateRoomMetadataRequest, "room"),
}

Handler = Callable[[Request], Awaitable[Response]]


class ClusterRoomService:
    """Wraps the node's own Twirp handler (`local`)."""

    def __init__(self, local: Handler, cluster: ClusterNode, verifier: TokenVerifier) -> None:
        self.local = local
        self.cluster = cluster
        self.verifier = verifier
        self.http = httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S, trust_env=False)

    async def close(self) -> None:
        await self.http.aclose()

    async def handle(self, request: Request) -> Response:
        method = request.path_params.get("method", "")
        relayed = self.cluster.relayed_for(request.headers.get(RELAY_HEADER, ""))
        if request.method != "POST" or relayed is not None or not self._authorized(request):
            return await self.local(request)
        try:
            if method == "ListRooms":
                return await self._list_rooms(request)
            if method in ROOM_FIELD:
                return await self._to_owner(request, method)
        except TwirpError as exc:
            return exc.response()
        except RouteError as exc:
            code = "not_found" if exc.status == 404 else "unavailable"
            return TwirpError(code, exc.message).response()
        return await self.local(request)

    def _authorized(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            return False
        try:
            self.verifier.verify(header[7:].strip())
        except AuthError:
            return False
        return True

    async def _to_owner(self, request: Request, method: str) -> Response:
        body = await read_body(request)
        request_type, field = ROOM_FIELD[method]
        as_json = _is_json(request)
        room = getattr(decode(request_type, body, as_json=as_json), field)
        if not room:
            return await self._local_with(request, body)
        create = method == "CreateRoom"
        try:
            route = await self.cluster.route(room, may_create=create)
        except RouteError as exc:
            if exc.status == 404:  # no such room anywhere: the local answer says so
                return await self._local_with(request, body)
            raise
        if route.local:
            return await self._local_with(request, body)
        return await self._forward(route.address, request, body)

    async def _local_with(self, request: Request, body: bytes) -> Response:
        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.local(Request(request.scope, receive))

    async def _forward(self, address: str, request: Request, body: bytes) -> Response:
        headers = {
            "authorization": request.headers.get("authorization", ""),
            "content-type": request.headers.get("content-type", ""),
            **self.cluster.relay_header(request.client.host if request.client else ""),
        }
        try:
            answer = await self.http.post(
                f"http://{address}{request.url.path}", content=body, headers=headers
            )
        except httpx.HTTPError as exc:
            log.info("RoomService: node %s did not answer: %r", address, exc)
            raise TwirpError("unavailable", "the room's node did not answer") from None
        return Response(
            answer.content, answer.status_code, media_type=answer.headers.get("content-type")
        )

    async def _list_rooms(self, request: Request) -> Response:
        body = await read_body(request)
        as_json = _is_json(request)
        try:
            nodes = await self.cluster.live_nodes()
        except RouteError:  # Redis is away: this node's rooms are all it can tell
            return await self._local_with(request, body)
        others = [n for n in nodes if n.node_id != self.cluster.node_id]
        answers = await asyncio.gather(
            self._local_with(request, body),
            *(self._forward(node.address, request, body) for node in others),
            return_exceptions=True,
        )
        merged = room_pb.ListRoomsResponse()
        for answer in answers:
            if isinstance(answer, BaseException):
                continue  # a node that died meanwhile has no rooms to list
            if answer.status_code != 200:
                return answer  # the grant is missing: every node says the same
            part = decode(room_pb.ListRoomsResponse, bytes(answer.body), as_json=as_json)
            assert isinstance(part, room_pb.ListRoomsResponse)
            merged.rooms.extend(part.rooms)
        if as_json:
            text = json_format.MessageToJson(merged, preserving_proto_field_name=True, indent=None)
            return Response(text, 200, media_type=JSON)
        return Response(merged.SerializeToString(), 200, media_type="application/protobuf")


def _is_json(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == JSON
