"""LiveKit client signalling over WebSocket: protobuf in, room calls out."""
