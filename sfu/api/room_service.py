"""LiveKit's ``livekit.RoomService`` over Twirp: each method's grant, request checks and answer.

Grants are LiveKit's: CreateRoom and DeleteRoom need ``roomCreate``, ListRooms ``roomList``,
every other method ``roomAdmin`` for the room it names (``video.room``). Sizes are checked
against the ``limits`` configuration (counted in ``sfu_limit_exceeded_total``) before anything
changes; the work itself is `sfu.room.admin`'s (its `AdminError` codes are Twirp's).
"""

from __future__ import annotations

from collections.abc import Mapping

from livekit.protocol import models
from livekit.protocol import room as room_pb

from sfu.api.twirp import Method, TwirpError, TwirpService, permission_denied
from sfu.auth import MAX_IDENTITY_LENGTH, MAX_ROOM_NAME_LENGTH, ClaimGrants, TokenVerifier
from sfu.config import Config
from sfu.media.transport.datachannel import MAX_MESSAGE_SIZE
from sfu.metrics import COUNTERS
from sfu.room import RoomManager, admin

SERVICE = "livekit.RoomService"
#: destination identities one SendData may name
MAX_DATA_DESTINATIONS = 1024
#: track sids one UpdateSubscriptions may name (as a client's UpdateSubscription)
MAX_SUBSCRIPTION_SIDS = 512


def _invalid(limit: str, message: str) -> TwirpError:
    COUNTERS.limit_exceeded(limit)
    return TwirpError("invalid_argument", message)


class RoomService:
    """The methods, bound to this node's rooms and configuration."""

    def __init__(self, rooms: RoomManager, config: Config) -> None:
        self.rooms = rooms
        self.config = config

    def twirp(self, verifier: TokenVerifier) -> TwirpService:
        methods = {
            "CreateRoom": Method(room_pb.CreateRoomRequest, self.create_room),
            "ListRooms": Method(room_pb.ListRoomsRequest, self.list_rooms),
            "DeleteRoom": Method(room_pb.DeleteRoomRequest, self.delete_room),
            "ListParticipants": Method(room_pb.ListParticipantsRequest, self.list_participants),
            "GetParticipant": Method(room_pb.RoomParticipantIdentity, self.get_participant),
            "RemoveParticipant": Method(room_pb.RoomParticipantIdentity, self.remove_participant),
            "MutePublishedTrack": Method(room_pb.MuteRoomTrackRequest, self.mute_published_track),
            "UpdateParticipant": Method(room_pb.UpdateParticipantRequest, self.update_participant),
            "UpdateSubscriptions": Method(
                room_pb.UpdateSubscriptionsRequest, self.update_subscriptions
            ),
            "SendData": Method(room_pb.SendDataRequest, self.send_data),
            "UpdateRoomMetadata": Method(
                room_pb.UpdateRoomMetadataRequest, self.update_room_metadata
            ),
        }
        return TwirpService(SERVICE, methods, verifier)

    # -- checks ---------------------------------------------------------------------------------
    @staticmethod
    def _admin(grants: ClaimGrants, room: str) -> None:
        if not grants.video.room_admin or grants.video.room != room:
            raise permission_denied()

    def _metadata(self, metadata: str) -> None:
        cap = self.config.limits.max_metadata_size
        if cap and len(metadata.encode()) > cap:
            raise _invalid("api_metadata_size", f"metadata size exceeds limits: {cap} bytes")

    @staticmethod
    def _room_name(name: str) -> None:
        if not name:
            raise TwirpError("invalid_argument", "no room name")
        if len(name) > MAX_ROOM_NAME_LENGTH:
            raise _invalid(
                "api_room_name_length",
                f"room name length exceeds limits: max length {MAX_ROOM_NAME_LENGTH}",
            )

    @staticmethod
    def _identity(identity: str) -> None:
        if not identity:
            raise TwirpError("invalid_argument", "identity cannot be empty")
        if len(identity) > MAX_IDENTITY_LENGTH:
            raise _invalid(
                "api_identity_length",
                f"participant identity length exceeds limits: max length {MAX_IDENTITY_LENGTH}",
            )

    def _participant_fields(self, name: str, attributes: Mapping[str, str]) -> None:
        limits = self.config.limits
        if len(name) > limits.max_participant_name_length:
            raise _invalid(
                "api_participant_name_length",
                f"name length exceeds limits: {limits.max_participant_name_length}",
            )
        cap = limits.max_attributes_size
        if cap and sum(len(k.encode()) + len(v.encode()) for k, v in attributes.items()) > cap:
            raise _invalid("api_attributes_size", f"attribute size exceeds limits: {cap} bytes")

    # -- rooms ----------------------------------------------------------------------------------
    async def create_room(
        self, request: room_pb.CreateRoomRequest, grants: ClaimGrants
    ) -> models.Room:
        if not grants.video.room_create:
            raise permission_denied()
        self._room_name(request.name)
        self._metadata(request.metadata)
        return admin.create_room(
            self.rooms,
            request.name,
            empty_timeout=request.empty_timeout,
            departure_timeout=request.departure_timeout,
            max_participants=request.max_participants,
            metadata=request.metadata,
        )

    async def list_rooms(
        self, request: room_pb.ListRoomsRequest, grants: ClaimGrants
    ) -> room_pb.ListRoomsResponse:
        if not grants.video.room_list:
            raise permission_denied()
        return room_pb.ListRoomsResponse(rooms=admin.list_rooms(self.rooms, request.names))

    async def delete_room(
        self, request: room_pb.DeleteRoomRequest, grants: ClaimGrants
    ) -> room_pb.DeleteRoomResponse:
        if not grants.video.room_create:
            raise permission_denied()
        await admin.delete_room(self.rooms, request.room)
        return room_pb.DeleteRoomResponse()

    async def update_room_metadata(
        self, request: room_pb.UpdateRoomMetadataRequest, grants: ClaimGrants
    ) -> models.Room:
        self._metadata(request.metadata)
        self._admin(grants, request.room)
        return admin.update_room_metadata(self.rooms, request.room, request.metadata)

    async def send_data(
        self, request: room_pb.SendDataRequest, grants: ClaimGrants
    ) -> room_pb.SendDataResponse:
        self._admin(grants, request.room)
        if len(request.nonce) not in (0, 16):
            raise TwirpError(
                "invalid_argument",
                f"nonce should be 16-bytes or not present, got: {len(request.nonce)} bytes",
            )
        destinations = list(request.destination_identities)
        if len(destinations) > MAX_DATA_DESTINATIONS:
            raise _invalid(
                "api_data_destinations", f"at most {MAX_DATA_DESTINATIONS} destination identities"
            )
        # the packet goes out with the same fields again: twice the payload must fit a message
        if request.ByteSize() * 2 > MAX_MESSAGE_SIZE:
            raise _invalid(
                "api_data_size", f"data too large for one data-channel message ({MAX_MESSAGE_SIZE})"
            )
        topic = request.topic if request.HasField("topic") else None
        admin.send_data(
            self.rooms,
            request.room,
            request.data,
            request.kind,
            destinations,
            topic,
            request.nonce,
        )
        return room_pb.SendDataResponse()

    # -- participants -------------------------------------------------------------------------
    async def list_participants(
        self, request: room_pb.ListParticipantsRequest, grants: ClaimGrants
    ) -> room_pb.ListParticipantsResponse:
        self._admin(grants, request.room)
        participants = admin.list_participants(self.rooms, request.room)
        return room_pb.ListParticipantsResponse(participants=participants)

    async def get_participant(
        self, request: room_pb.RoomParticipantIdentity, grants: ClaimGrants
    ) -> models.ParticipantInfo:
        self._admin(grants, request.room)
        participant = admin.find_participant(self.rooms, request.room, request.identity)
        return participant.info()

    async def remove_participant(
        self, request: room_pb.RoomParticipantIdentity, grants: ClaimGrants
    ) -> room_pb.RemoveParticipantResponse:
        self._admin(grants, request.room)
        await admin.remove_participant(self.rooms, request.room, request.identity)
        return room_pb.RemoveParticipantResponse()

    async def mute_published_track(
        self, request: room_pb.MuteRoomTrackRequest, grants: ClaimGrants
    ) -> room_pb.MuteRoomTrackResponse:
        self._admin(grants, request.room)
        track = admin.mute_published_track(
            self.rooms,
            request.room,
            request.identity,
            request.track_sid,
            request.muted,
            allow_unmute=self.config.room.enable_remote_unmute,
        )
        return room_pb.MuteRoomTrackResponse(track=track)

    async def update_participant(
        self, request: room_pb.UpdateParticipantRequest, grants: ClaimGrants
    ) -> models.ParticipantInfo:
        self._participant_fields(request.name, request.attributes)
        self._metadata(request.metadata)
        self._admin(grants, request.room)
        return admin.update_participant(
            self.rooms,
            request.room,
            request.identity,
            metadata=request.metadata,
            name=request.name,
            attributes=dict(request.attributes),
            permission=request.permission if request.HasField("permission") else None,
        )

    async def update_subscriptions(
        self, request: room_pb.UpdateSubscriptionsRequest, grants: ClaimGrants
    ) -> room_pb.UpdateSubscriptionsResponse:
        self._admin(grants, request.room)
        self._identity(request.identity)
        count = len(request.track_sids) + sum(len(p.track_sids) for p in request.participant_tracks)
        if count > MAX_SUBSCRIPTION_SIDS:
            raise _invalid("api_subscription_sids", f"at most {MAX_SUBSCRIPTION_SIDS} track sids")
        admin.update_subscriptions(
            self.rooms,
            request.room,
            request.identity,
            request.track_sids,
            request.participant_tracks,
            request.subscribe,
        )
        return room_pb.UpdateSubscriptionsResponse()
