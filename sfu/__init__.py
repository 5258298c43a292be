"""The selective forwarding unit: LiveKit client signalling, WebRTC transport and raw RTP forwarding."""
