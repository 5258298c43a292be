"""Subscriber worker processes: each holds many `Subscriber`s on one event loop.

The parent starts `run_worker(conn, config)` in a spawned process. The worker joins its
subscribers at their scheduled times, follows the layout (the active speaker rotates every
`SPEAKER_PERIOD_S`), and talks to the parent over a `multiprocessing` pipe:

- it sends `{"type": "join", …}` per subscriber and `{"type": "tick", …}` every second (with the
  process's own CPU time, so the report can say what one received packet cost the load tester);
- on `"final"` it answers `{"type": "final", …}` with its totals;
- on `"stop"` (or end of input, or `max_seconds`) it closes everything and sends `"closed"`.

SIGINT is ignored here: Ctrl-C reaches the parent, which stops the workers in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from multiprocessing.connection import Connection
from typing import Any

from livekit.protocol import models

from loadtest import rx
from loadtest.participant import Subscriber, TileRequest
from loadtest.signal import SignalError, TokenSource
from loadtest.webrtc import use_interfaces_for

__all__ = ["make_layout", "publisher_number", "run_worker"]

SPEAKER_PERIOD_S = 10.0
CONNECT_TIMEOUT_S = 20.0
SMALL_TILES = 5
GRID_TILES = 9
VIDEO = models.TrackType.VIDEO
#: latency samples one worker reports at the end (evenly thinned beyond this, the max kept)
MAX_FINAL_LATENCY_SAMPLES = 200_000


def publisher_number(identity: str) -> int | None:
    """`pub-0007` → 7; anything else (another load tester's participant) → None."""
    prefix, _, number = identity.rpartition("-")
    if prefix.endswith("pub") and number.isdigit():
        return int(number)
    return None


def make_layout(layout: str, index: int, seed: int, talking: int, epoch_ns: int) -> Any:
    """The tile policy of subscriber `index`: a function from the room's tracks to requests.

    speaker: the active speaker (rotating among the `talking` publishers) large at 1280×720, five
    others small at 160×90, the rest hidden; grid: nine tiles at 640×360; audio-only: no video.
    """
    order_rng = random.Random(seed * 1_000_003 + index)

    def policy(tracks: dict[str, tuple[str, int]]) -> dict[str, TileRequest]:
        video = sorted(
            (n, sid)
            for sid, (who, kind) in tracks.items()
            if kind == VIDEO and (n := publisher_number(who)) is not None
        )
        if not video:
            return {}
        if layout == "audio-only":
            return {sid: TileRequest(True) for _, sid in video}
        shuffled = [sid for _, sid in video]
        order_rng.seed(seed * 1_000_003 + index)
        order_rng.shuffle(shuffled)
        if layout == "grid":
            shown = set(shuffled[:GRID_TILES])
            return {
                sid: TileRequest(False, 640, 360) if sid in shown else TileRequest(True)
                for _, sid in video
            }
        elapsed = (time.monotonic_ns() - epoch_ns) / 1e9
        # The talkers' video, or (while their tracks are not known yet) any video.
        speakers = [sid for n, sid in video if n < max(1, talking)] or [sid for _, sid in video]
        large = speakers[int(elapsed // SPEAKER_PERIOD_S) % len(speakers)]
        small = [sid for sid in shuffled if sid != large][:SMALL_TILES]
        requests = {sid: TileRequest(True) for _, sid in video}
        requests[large] = TileRequest(False, 1280, 720)
        for sid in small:
            requests[sid] = TileRequest(False, 160, 90)
        return requests

    return policy


def _send(conn: Connection, message: dict[str, Any]) -> None:
    """Send to the parent, blocking: the event loop's reader made the shared socket non-blocking,
    and a large message must not fail with EAGAIN when the parent is slow to read."""
    fd = conn.fileno()
    os.set_blocking(fd, True)
    try:
        conn.send(message)
    finally:
        os.set_blocking(fd, False)


def _thin(samples: list[float], limit: int) -> list[float]:
    """At most about `limit` evenly spaced samples, always including the largest."""
    if len(samples) <= limit:
        return samples
    step = -(-len(samples) // limit)
    return [*samples[::step], max(samples)]


def _totals(subs: list[Subscriber]) -> dict[str, Any]:
    streams = [s for sub in subs for s in sub.streams.values()]
    by_layer: dict[str, int] = {}
    for s in streams:
        for layer, octets in s.octets_by_layer.items():
            key = f"{s.track}:{layer}"
            by_layer[key] = by_layer.get(key, 0) + octets
    return {
        "packets": sum(s.packets for s in subs),
        "octets": sum(s.octets for s in subs),
        "expected": sum(s.expected for s in streams),
        "received": sum(s.received for s in streams),
        "streams": len(streams),
        "layer_switches": sum(s.layer_switches for s in streams),
        "octets_by_track_layer": by_layer,
        "decrypt_errors": sum(s.decrypt_errors for s in subs),
        "rx": sorted(
            {
                rx.kind(s.table) if s.sub_transport.reader else "per-datagram"
                for s in subs
                if s.sub_transport.connected.is_set()
            }
        ),
        "rx_overflow": sum(s.table.overflow for s in subs),
        "rx_truncated": sum(s.table.truncated for s in subs),
        "latency_ms": _thin([x for sub in subs for x in sub.latency_ms], MAX_FINAL_LATENCY_SAMPLES),
        "connected": sum(s.sub_transport.connected.is_set() for s in subs),
        "errors": [f"{s.identity}: {s.error}" for s in subs if s.error][:10],
    }


async def _worker(conn: Connection, config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    use_interfaces_for(config["url"])
    tokens = TokenSource(config.get("api_key"), config.get("api_secret"), config.get("token_url"))
    epoch_ns: int = config["epoch_ns"]
    subs: list[Subscriber] = []
    inbox: asyncio.Queue[str] = asyncio.Queue()

    def readable() -> None:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait("stop")
            return
        inbox.put_nowait(str(message))

    loop.add_reader(conn.fileno(), readable)

    async def join_one(spec: dict[str, Any]) -> None:
        delay = epoch_ns / 1e9 + spec["join_at"] - time.monotonic()
        await asyncio.sleep(max(0.0, delay))
        identity, room = spec["identity"], spec["room"]
        start = time.perf_counter()
        error: str | None = None
        sub: Subscriber | None = None
        try:
            token = await tokens.token(identity, room, publish=False)
            sub = Subscriber(
                config["url"],
                token,
                identity,
                sample_every=config["sample_every"],
                rx_mode=config.get("rx", "auto"),
                layout=make_layout(
                    config["layout"], spec["index"], config["seed"], config["talking"], epoch_ns
                ),
            )
            subs.append(sub)
            await sub.join()
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await sub.sub_transport.connected.wait()
        except (SignalError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if sub is not None and sub.sub_transport.failed:
                error = sub.sub_transport.failed
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        _send(conn, {"type": "join", "identity": identity, "ms": elapsed_ms, "error": error})

    joins = [asyncio.create_task(join_one(spec)) for spec in config["subscribers"]]
    deadline = time.monotonic() + config["max_seconds"]
    last_lat = 0
    try:
        while time.monotonic() < deadline:
            try:
                message = await asyncio.wait_for(inbox.get(), 1.0)
            except TimeoutError:
                message = "tick"
            if message == "tick":
                new: list[float] = []
                for sub in subs:
                    new.extend(sub.new_latency_ms)
                    sub.new_latency_ms.clear()
                    if sub.signal.join is not None:
                        sub.apply_layout()
                _send(
                    conn,
                    {
                        "type": "tick",
                        "t": time.monotonic(),
                        "cpu_s": time.process_time(),
                        "packets": sum(s.packets for s in subs),
                        "octets": sum(s.octets for s in subs),
                        "latency_ms": new[:5000],
                    },
                )
                last_lat += len(new)
            elif message == "final":
                _send(conn, {"type": "final", **_totals(subs)})
            elif message == "stop":
                break
    finally:
        for task in joins:
            task.cancel()
        await asyncio.gather(*joins, return_exceptions=True)
        await asyncio.gather(
            *(asyncio.wait_for(s.close(), 10) for s in subs), return_exceptions=True
        )
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        with contextlib.suppress(Exception):
            _send(conn, {"type": "closed"})


def run_worker(conn: Connection, config: dict[str, Any]) -> None:
    """Process entry point (multiprocessing, spawn)."""
    import logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    if config.get("rx", "auto") != "per-datagram":
        # Batched receive pauses the datagram transport, which asyncio's loop can and uvloop's
        # cannot; with batches the loop wakes up per burst, not per packet.
        asyncio.run(_worker(conn, config))
        return
    try:
        import uvloop

        uvloop.run(_worker(conn, config))
    except ImportError:  # pragma: no cover
        asyncio.run(_worker(conn, config))
