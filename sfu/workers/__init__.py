"""Media workers, seen from the control process: the worker processes (`pool`) and the
proxies (`proxies`) that stand in a room for the peers, receivers and down tracks a worker
holds, implementing `sfu.room.types.PeerFactory` and `sfu.room.media.MediaFactory`."""
