"""Where rooms live: the single-node router, and later the Redis-backed one."""
