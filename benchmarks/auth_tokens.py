"""Benchmark: LiveKit tokens the auth service issues per second with a warm OpenID cache.

Three numbers, each the best of ``--rounds``:

* ``mint``  — signing join tokens alone (:class:`auth_service.tokens.TokenMinter`);
* ``asgi``  — whole ``POST /get_token`` requests through the Starlette app in-process
  (decoding, validation, cached OpenID verification, derivations, signing, metrics);
* ``http``  — the same over real HTTP to ``python -m auth_service`` (uvicorn, one process)
  with ``--connections`` lean keep-alive clients in this process (skip with ``--no-http``).

The OpenID cache is warmed by one real lookup against a tiny local homeserver stand-in (reached
through ``LIVEKIT_AUTH_HOMESERVER_URLS``); every measured request then hits the cache. Rate
limits are off. Prints numbers only; asserts nothing.

Run: ``.venv/bin/python benchmarks/auth_tokens.py``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from auth_service.app import build_verifier, create_app
from auth_service.config import Settings
from auth_service.ratelimit import RateLimit
from auth_service.tokens import TokenMinter

SERVER_NAME = "bench.example"
USER_ID = f"@bench:{SERVER_NAME}"
SECRET = "benchmark-secret-0123456789abcdefghijklmn"
OFF = RateLimit(per_second=0.0, burst=1)


class FakeHomeserver:
    """Answers every request with the userinfo of ``USER_ID``, on a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _start(self) -> asyncio.Server:
        body = json.dumps({"sub": USER_ID}).encode()
        response = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(response)
            await writer.drain()
            writer.close()

        return await asyncio.start_server(handle, "127.0.0.1", 0)

    async def _stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    def stop(self) -> None:
        """Close the server and end its thread."""
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def request_body() -> bytes:
    return json.dumps(
        {
            "room_id": "!benchmark:bench.example",
            "slot_id": "m.call#",
            "openid_token": {
                "access_token": "warm-token",
                "token_type": "Bearer",
                "matrix_server_name": SERVER_NAME,
                "expires_in": 3600,
            },
            "member": {"id": "m1", "claimed_user_id": USER_ID, "claimed_device_id": "DEV"},
        }
    ).encode()


def bench_mint(count: int) -> float:
    minter = TokenMinter("APIkey", SECRET)
    now = int(time.time())
    started = time.perf_counter()
    for index in range(count):
        minter.join_token("O8437W3+jmzMVjoIP3tNwbm+XxHQk2iKpOA7aqw3qSc", f"identity-{index}", now)
    return count / (time.perf_counter() - started)


async def call_asgi(app: Any, body: bytes) -> int:
    """One ``POST /get_token`` straight through the ASGI interface; returns the status."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/get_token",
        "raw_path": b"/get_token",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"bench"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8080),
    }
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    status = 0

    async def receive() -> dict[str, Any]:
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def bench_asgi(homeserver_url: str, count: int) -> float:
    settings = Settings(
        livekit_url="wss://sfu.bench.example",
        api_key="APIkey",
        api_secret=SECRET,
        full_access_homeservers=(SERVER_NAME,),
        homeserver_urls={SERVER_NAME: homeserver_url},
        ip_rate_limit=OFF,
        user_rate_limit=OFF,
    )
    app = create_app(settings, verifier=build_verifier(settings))
    body = request_body()
    if await call_asgi(app, body) != 200:  # the first request fills the OpenID cache
        raise RuntimeError("the warm-up request failed")
    started = time.perf_counter()
    for _ in range(count):
        if await call_asgi(app, body) != 200:
            raise RuntimeError("a request failed")
    return count / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _hammer(port: int, count: int, connections: int) -> float:
    body = request_body()
    request = (
        b"POST /get_token HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    async def worker(share: int) -> None:
        # A lean keep-alive client, so that the client costs little of the shared CPU.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(share):
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(head.decode(errors="replace"))
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
        finally:
            writer.close()

    await worker(1)  # the first request fills the OpenID cache
    per_worker = count // connections
    started = time.perf_counter()
    await asyncio.gather(*(worker(per_worker) for _ in range(connections)))
    return per_worker * connections / (time.perf_counter() - started)


def bench_http(homeserver_url: str, count: int, connections: int) -> float:
    port = free_port()
    env = {
        **os.environ,
        "LIVEKIT_URL": "wss://sfu.bench.example",
        "LIVEKIT_KEY": "APIkey",
        "LIVEKIT_SECRET": SECRET,
        "LIVEKIT_FULL_ACCESS_HOMESERVERS": SERVER_NAME,
        "LIVEKIT_JWT_BIND": f"127.0.0.1:{port}",
        "LIVEKIT_AUTH_HOMESERVER_URLS": f"{SERVER_NAME}={homeserver_url}",
        "LIVEKIT_AUTH_RATE_LIMIT_IP_PER_SECOND": "0",
        "LIVEKIT_AUTH_RATE_LIMIT_USER_PER_SECOND": "0",
        "LIVEKIT_LOG_LEVEL": "warn",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "auth_service"],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the auth service did not start") from None
                time.sleep(0.05)
        return asyncio.run(_hammer(port, count, connections))
    finally:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8, help="HTTP clients (http mode)")
    parser.add_argument("--no-http", action="store_true", help="skip the uvicorn measurement")
    args = parser.parse_args()
    homeserver = FakeHomeserver()
    try:
        results = {
            "mint": max(bench_mint(args.requests * 5) for _ in range(args.rounds)),
            "asgi": max(
                asyncio.run(bench_asgi(homeserver.url, args.requests)) for _ in range(args.rounds)
            ),
        }
        if not args.no_http:
            results["http"] = max(
                bench_http(homeserver.url, args.requests, args.connections)
                for _ in range(args.rounds)
            )
    finally:
        homeserver.stop()
    print(f"mint only:                  {results['mint']:10.0f} tokens/s")
    print(f"POST /get_token in-process: {results['asgi']:10.0f} tokens/s (warm OpenID cache)")
    if "http" in results:
        print(
            f"POST /get_token over HTTP:  {results['http']:10.0f} tokens/s "
            f"(uvicorn, 1 process, {args.connections} keep-alive clients)"
        )


if __name__ == "__main__":
    main()
