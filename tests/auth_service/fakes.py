"""Small local stand-ins for the auth service tests: HTTP(S) servers, DNS answers, verifiers.

``FakeHttpServer`` is an asyncio server on a loopback address that records every request (path,
Host header, TLS server name) and answers with a scripted :class:`Reply`: a normal response, a
connection that hangs, bytes that are not HTTP, or an early close. ``FakeResolver`` answers DNS
from dictionaries and can hang or fail on chosen names.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx
from starlette.applications import Starlette

from auth_service.config import Settings
from auth_service.matrix import OpenIdError
from auth_service.net import IpAddress, NetError, SrvRecord, parse_ip
from auth_service.ratelimit import RateLimit
from auth_service.sfu_client import CreateRoomRequest, RoomCreationError

API_KEY = "test-api-key"
API_SECRET = "a-test-secret-that-is-long-enough-0123456789"
LIVEKIT_URL = "wss://sfu.example.org"
NO_LIMIT = RateLimit(per_second=0.0, burst=1)


def make_settings(**overrides: object) -> Settings:
    """Settings for tests: rate limits off unless overridden."""
    values: dict[str, object] = {
        "livekit_url": LIVEKIT_URL,
        "api_key": API_KEY,
        "api_secret": API_SECRET,
        "full_access_homeservers": ("example.org",),
        "ip_rate_limit": NO_LIMIT,
        "user_rate_limit": NO_LIMIT,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def asgi_client(
    app: Starlette, client: tuple[str, int] = ("203.0.113.7", 50000)
) -> httpx.AsyncClient:
    """An HTTP client talking to ``app`` in-process, as if from address ``client``."""
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://auth.test")


@dataclass(frozen=True)
class Reply:
    """What a fake server does with a request."""

    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    mode: str = "normal"  # normal | hang | garbage | close

    @classmethod
    def json(cls, text: str, status: int = 200) -> Reply:
        """A JSON answer."""
        return cls(status, text.encode(), (("Content-Type", "application/json"),))


HANG = Reply(mode="hang")
GARBAGE = Reply(mode="garbage")
CLOSE = Reply(mode="close")
NOT_FOUND = Reply(404, b"{}")


@dataclass(frozen=True)
class Seen:
    """One request a fake server received."""

    path: str
    host: str
    sni: str | None


Handler = Callable[[str], Reply]


@dataclass
class FakeHttpServer:
    """A scripted HTTP/1.1 server; TLS when ``cert`` and ``key`` are given."""

    handler: Handler
    cert: Path | None = None
    key: Path | None = None
    address: str = "127.0.0.1"
    requests: list[Seen] = field(default_factory=list)
    connections: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> FakeHttpServer:
        tls = None
        if self.cert is not None and self.key is not None:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            tls.load_cert_chain(self.cert, self.key)
            tls.sni_callback = self._remember_sni
        self._server = await asyncio.start_server(self._serve, self.address, 0, ssl=tls)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Close the listener and every open connection."""
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    @staticmethod
    def _remember_sni(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        sslobj.sni = name  # type: ignore[attr-defined]

    @property
    def paths(self) -> list[str]:
        """Paths requested so far (without query strings)."""
        return [seen.path.split("?", 1)[0] for seen in self.requests]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._handle(reader, writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels hanging handlers. Python 3.11's StreamReaderProtocol then calls
            # task.exception() on the cancelled task from a callback, which logs an "Exception in
            # callback" error (fixed in 3.12), so the handler ends normally instead.
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h11.Connection(our_role=h11.SERVER)
        while True:
            event = connection.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    return
                connection.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                break
        headers = {name.decode().lower(): value.decode() for name, value in event.headers}
        sslobj = writer.get_extra_info("ssl_object")
        sni = getattr(sslobj, "sni", None) if sslobj is not None else None
        path = event.target.decode()
        self.requests.append(Seen(path, headers.get("host", ""), sni))
        reply = self.handler(path)
        if reply.mode == "hang":
            await asyncio.sleep(3600)
        if reply.mode == "garbage":
            writer.write(b"\x00\x01 this is not HTTP at all \xff\r\n\r\n")
            await writer.drain()
            return
        if reply.mode == "close":
            return
        response_headers = [*reply.headers, ("Content-Length", str(len(reply.body)))]
        writer.write(
            connection.send(h11.Response(status_code=reply.status, headers=response_headers)) or b""
        )
        writer.write(connection.send(h11.Data(data=reply.body)) or b"")
        writer.write(connection.send(h11.EndOfMessage()) or b"")
        await writer.drain()


class FakeResolver:
    """DNS answers from dictionaries; names in ``hang`` never answer, in ``fail`` error out."""

    def __init__(
        self,
        addresses: dict[str, list[str]] | None = None,
        srv: dict[str, list[SrvRecord]] | None = None,
        *,
        hang: set[str] | None = None,
        fail: set[str] | None = None,
    ) -> None:
        self.addresses = addresses or {}
        self.srv = srv or {}
        self.hang = hang or set()
        self.fail = fail or set()
        self.queries: list[tuple[str, str]] = []

    async def _maybe_stall(self, name: str) -> None:
        if name in self.hang:
            await asyncio.sleep(3600)
        if name in self.fail:
            raise NetError(f"SERVFAIL for {name}")

    async def resolve_srv(self, name: str) -> list[SrvRecord]:
        """Scripted SRV answers; unknown names have none."""
        self.queries.append(("SRV", name))
        await self._maybe_stall(name)
        return list(self.srv.get(name, []))

    async def resolve_addresses(self, host: str) -> list[IpAddress]:
        """Scripted address answers; unknown names do not exist."""
        self.queries.append(("A", host))
        await self._maybe_stall(host)
        if host not in self.addresses:
            raise NetError(f"NXDOMAIN for {host}")
        addresses = [parse_ip(text) for text in self.addresses[host]]
        return [address for address in addresses if address is not None]


class StaticVerifier:
    """A stand-in OpenID verifier: ``tokens`` maps access tokens to user IDs."""

    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = tokens or {}
        self.calls: list[tuple[str, str]] = []

    async def verify(self, server_name: str, access_token: str) -> str:
        """The user of a known token; OpenIdError for any other."""
        self.calls.append((server_name, access_token))
        user_id = self.tokens.get(access_token)
        if user_id is None or user_id.partition(":")[2] != server_name:
            raise OpenIdError("unknown token")
        return user_id


class RecordingRoomCreator:
    """A room creator that records requests and can be told to fail."""

    def __init__(self, *, fail: bool = False) -> None:
        self.fail = fail
        self.requests: list[CreateRoomRequest] = []

    async def create_room(self, request: CreateRoomRequest) -> None:
        """Record, then fail if told to."""
        self.requests.append(request)
        if self.fail:
            raise RoomCreationError("the SFU is down")


@dataclass
class Tarpit:
    """A TCP listener that accepts connections and never answers (a host that hangs).

    ``open_now`` and ``max_open`` count the connections it holds, which are the outbound
    sockets the service under test keeps open towards it.
    """

    address: str = "127.0.0.1"
    port: int = 0
    accepted: int = 0
    open_now: int = 0
    max_open: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def __aenter__(self) -> Tarpit:
        self._server = await asyncio.start_server(self._hold, self.address, 0, backlog=4096)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _hold(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        self._writers.add(writer)
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            pass  # end normally: see FakeHttpServer._serve (Python 3.11's StreamReaderProtocol)
        finally:
            self.open_now -= 1
            self._writers.discard(writer)
            writer.transport.abort()
