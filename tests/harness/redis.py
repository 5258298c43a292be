"""A real ``redis-server`` on a free loopback port, without persistence, stoppable and restartable
on the same port (a Redis outage or restart mid-test), stopped by PID.

A missing ``redis-server`` fails the test (``make test`` installs it).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.harness.sfu import free_tcp_port

START_TIMEOUT_S = 10.0


class RedisServer:
    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is missing: run `make system-deps`"
        self.binary = binary
        self.port = free_tcp_port()
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.address}/0"

    def start(self) -> None:
        assert self.process is None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.data_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.5),
            ):
                return
            assert self.process.poll() is None and time.monotonic() < deadline, (
                "redis-server failed"
            )
            time.sleep(0.05)

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections hang instead of being refused; its clock runs on."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop it (its data is gone: no persistence)."""
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def running_sentinel(data_dir: Path, master: RedisServer, name: str = "sfu") -> Iterator[str]:
    """``redis-server --sentinel`` monitoring `master` as `name`; yields its ``host:port``."""
    binary = master.binary
    port = free_tcp_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {data_dir}\n"
        f"sentinel monitor {name} 127.0.0.1 {master.port} 1\n"
    )
    process = subprocess.Popen(
        [binary, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            assert process.poll() is None and time.monotonic() < deadline, "sentinel failed"
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def running_redis_server(data_dir: Path) -> Iterator[RedisServer]:
    server = RedisServer(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
