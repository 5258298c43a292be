"""A network namespace for clients that must not reach the SFU's media port directly.

`client_namespace()` creates a namespace joined to this one by a veth pair on a random
10.x.y.0/30: the host side (`host_ip`) is where the test serves what the clients may reach (the
page, a signalling forwarder, coturn); the SFU stays on 127.0.0.1, which inside the namespace
is the namespace's own loopback, so its UDP port is unreachable from there by construction.
`tcp_forwarder()` relays one TCP listener to another address (the stand-in for a reverse proxy).
Everything is removed at exit (deleting the namespace deletes the veth pair).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

IP = shutil.which("ip") or "/usr/sbin/ip"
CHROMIUM = os.environ.get("SFU_TEST_CHROMIUM", "/usr/bin/chromium")


@dataclass(frozen=True)
class Namespace:
    name: str
    host_ip: str  # this namespace's side of the veth pair
    inner_ip: str  # the client namespace's side
    host_dev: str = ""  # the veth on this side (tests/harness/shaper.py shapes its egress)

    def exec_argv(self, *argv: str) -> list[str]:
        return [IP, "netns", "exec", self.name, *argv]

    def run(self, *argv: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.exec_argv(*argv), capture_output=True, text=True, timeout=timeout_s, check=False
        )

    def chromium_wrapper(self, directory: Path) -> str:
        """A script that runs Chromium inside the namespace (for Playwright's executable_path;
        `ip netns exec` keeps the pipe descriptors Playwright drives it through)."""
        path = directory / f"chromium-in-{self.name}"
        path.write_text(f'#!/bin/sh\nexec {IP} netns exec {self.name} {CHROMIUM} "$@"\n')
        path.chmod(0o755)
        return str(path)

    def udp_refused(self, address: str, port: int) -> bool:
        """True when a datagram sent from inside the namespace to address:port is answered
        with ICMP port unreachable (nothing listens there, as seen from the namespace)."""
        probe = (
            "import socket,sys\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(2)\n"
            f"s.connect(({address!r},{port}))\n"
            "s.send(b'\\x00\\x01\\x00\\x00\\x21\\x12\\xa4\\x42'+b'\\x00'*12)\n"
            "try:\n s.recv(100)\nexcept ConnectionRefusedError:\n sys.exit(7)\n"
            "except OSError:\n sys.exit(3)\n"
        )
        return self.run(sys.executable, "-c", probe).returncode == 7


def _ip(*argv: str) -> None:
    result = subprocess.run([IP, *argv], capture_output=True, text=True, timeout=20, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(argv)} failed: {result.stderr.strip()}")


@contextlib.contextmanager
def client_namespace() -> Iterator[Namespace]:
    """A fresh namespace with lo up and a veth pair to this one (needs root and iproute2)."""
    if os.geteuid() != 0:
        raise RuntimeError("network namespaces need root (ip netns add)")
    tag = f"{os.getpid() % 100000}{random.randrange(1000):03d}"
    name, veth_host, veth_inner = f"sfut{tag}", f"vh{tag}", f"vi{tag}"
    second, third = random.randrange(200, 250), random.randrange(0, 64) * 4
    net = f"10.{second}.{random.randrange(256)}"
    host_ip, inner_ip = f"{net}.{third + 1}", f"{net}.{third + 2}"
    _ip("netns", "add", name)
    try:
        _ip("link", "add", veth_host, "type", "veth", "peer", "name", veth_inner)
        _ip("link", "set", veth_inner, "netns", name)
        _ip("addr", "add", f"{host_ip}/30", "dev", veth_host)
        _ip("link", "set", veth_host, "up")
        _ip("-n", name, "addr", "add", f"{inner_ip}/30", "dev", veth_inner)
        _ip("-n", name, "link", "set", veth_inner, "up")
        _ip("-n", name, "link", "set", "lo", "up")
        yield Namespace(name, host_ip, inner_ip, veth_host)
    finally:
        with contextlib.suppress(RuntimeError):
            _ip("link", "del", veth_host)
        _ip("netns", "del", name)


@contextlib.asynccontextmanager
async def tcp_forwarder(listen_host: str, target_host: str, target_port: int) -> AsyncIterator[int]:
    """Accept on listen_host:<ephemeral> and relay each connection to target; yields the port."""
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        except OSError:
            writer.close()
            return
        for coro in (pipe(reader, up_writer), pipe(up_reader, writer)):
            task = asyncio.create_task(coro)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, listen_host, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5.0)
