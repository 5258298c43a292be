"""LiveKit's server API on this node: RoomService over Twirp, and the webhooks rooms send."""
