"""A round-robin TCP load balancer on loopback, as an operator puts in front of SFU nodes.

`running_balancer(ports)` listens on a free port and hands each connection to the next backend
port in turn, skipping a backend that refuses the connection (a dead node), so clients that know
only the balancer's URL reach some live node without any affinity. Bytes are copied both ways
unchanged (WebSocket signalling and HTTP alike).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Sequence

from tests.harness.sfu import free_tcp_port


class Balancer:
    def __init__(self, backends: Sequence[int]) -> None:
        self.backends = list(backends)
        self.port = free_tcp_port()
        self._next = itertools.cycle(range(len(self.backends)))
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        for _ in range(len(self.backends)):
            port = self.backends[next(self._next)]
            with contextlib.suppress(OSError):
                return await asyncio.open_connection("127.0.0.1", port)
        raise ConnectionRefusedError("no backend takes connections")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.close()
            return

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(OSError):
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))


@contextlib.asynccontextmanager
async def running_balancer(backends: Sequence[int]) -> AsyncIterator[Balancer]:
    balancer = Balancer(backends)
    server = await asyncio.start_server(balancer._serve, "127.0.0.1", balancer.port)
    try:
        yield balancer
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 5)
