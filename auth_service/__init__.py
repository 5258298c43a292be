"""Matrix OpenID token → LiveKit access token: a drop-in for lk-jwt-service."""
