"""What a validated token request resolves to, whichever route it came by (:class:`Grant`)."""

from __future__ import annotations

from dataclasses import dataclass

from .tokens import legacy_participant_identity, participant_identity


@dataclass(frozen=True)
class Grant:
    """What a validated token request resolves to."""

    server_name: str
    access_token: str
    claimed_user_id: str
    delay_id: str
    delay_timeout: int  # ms
    matrix_room: str
    alias: str
    device_id: str
    member_id: str | None  # None on the legacy endpoint
    delegate_only: bool = False  # /delegate_delayed_leave: no token, no room
    subscribe_only: bool = False  # federation get_token: no publishing, no room creation

    def identity(self, user_id: str) -> str:
        """The LiveKit identity of the verified ``user_id``."""
        if self.member_id is None:
            return legacy_participant_identity(user_id, self.device_id)
        return participant_identity(user_id, self.device_id, self.member_id)
