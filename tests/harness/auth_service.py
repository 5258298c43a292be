"""The auth service as a real process (``python -m auth_service``) and a ``redis-server``
beside it, each on a free loopback port, stopped by PID.

``running_auth_service(env)`` starts the service with ``env`` added to the environment, waits
(bounded) for ``/healthz`` and yields an :class:`AuthProcess`, whose ``kill()`` and ``start()``
restart it mid-test. ``running_redis()`` starts ``redis-server`` without persistence to disk;
a missing ``redis-server`` fails the test (``make test`` installs it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.harness.redis import running_redis_server
from tests.harness.sfu import REPO_ROOT, free_tcp_port

START_TIMEOUT_S = 20.0


class AuthProcess:
    """A restartable auth service process on one port."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_tcp_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env, "LIVEKIT_JWT_BIND": f"127.0.0.1:{self.port}"}
        self.env["PYTHONPATH"] = str(REPO_ROOT)
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "auth_service"],
            cwd=REPO_ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the auth service exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"the auth service did not start:\n{self.log_tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)
            self.process.wait(10)

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_auth_service(env: dict[str, str], log_path: Path) -> Iterator[AuthProcess]:
    service = AuthProcess(env, log_path)
    service.start()
    try:
        yield service
    finally:
        service.kill(signal.SIGTERM)
        service.kill()


@contextlib.contextmanager
def running_redis(data_dir: Path) -> Iterator[str]:
    """A ``redis-server`` on a free port; yields its ``redis://`` URL."""
    with running_redis_server(data_dir) as server:
        yield server.url
