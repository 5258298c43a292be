"""The SFU under test as a real subprocess: free ports, a temporary LiveKit-style config, readiness.

`running_sfu()` starts `python -m sfu --config FILE` on loopback, waits (bounded) for
`GET /healthz` to answer 200, yields an `SfuInstance`, then stops the process by PID (SIGTERM,
then SIGKILL to its own process group). If the SFU exits before the harness stops it, the harness
raises `SfuExitedError` (an `AssertionError`, so pytest reports a failure) carrying the tail of
the SFU's log. The log tail is also printed at teardown, which pytest shows only for failing tests.

At teardown the whole log is scanned (`tests.harness.logcheck`): a traceback, an ERROR line or an
asyncio "Task exception was never retrieved" fails the test with those records, unless the test
declared it with `expect_log_errors=[regex, ...]` (and then each pattern must have appeared).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.harness.logcheck import UnexpectedLogErrors, check_log_text
from tests.harness.tokens import mint_token, new_api_key_pair

REPO_ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 200
SFU_COMMAND: tuple[str, ...] = (sys.executable, "-m", "sfu", "--config", "{config}")


class SfuExitedError(AssertionError):
    """The SFU process died on its own (at startup or while a test was running)."""


class SfuLogErrors(UnexpectedLogErrors):
    """The SFU logged a traceback or an error the test did not declare."""


@dataclass(frozen=True)
class SfuInstance:
    """A running SFU. Unpacks as `(url, api_key, api_secret, metrics_url, pid)`."""

    url: str  # ws://127.0.0.1:PORT (clients append /rtc)
    api_key: str
    api_secret: str
    metrics_url: str
    pid: int
    http_url: str
    port: int
    rtc_port_range: tuple[int, int]
    config_path: Path
    log_path: Path
    process: asyncio.subprocess.Process = field(repr=False, compare=False)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.url, self.api_key, self.api_secret, self.metrics_url, self.pid))

    def token(self, identity: str, room: str, **grants: Any) -> str:
        """A token for this SFU's key (see `tests.harness.tokens.mint_token` for `grants`)."""
        return mint_token(self.api_key, self.api_secret, identity, room, **grants)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)

    def log_problems(self, expected: Sequence[str | re.Pattern[str]] = ()) -> str | None:
        """The failure message for undeclared errors in the log so far (None when clean)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return None
        return check_log_text(f"SFU (pid {self.pid}, {self.log_path})", text, expected)

    def assert_alive(self) -> None:
        """Raise `SfuExitedError` with the log tail if the process has exited."""
        code = self.process.returncode
        if code is not None:
            raise SfuExitedError(
                f"SFU (pid {self.pid}) exited early with code {code}; log tail:\n{self.log_tail()}"
            )


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no log file)"
    return "\n".join(text.splitlines()[-lines:])


def metric(text: str, name: str) -> float:
    """The value of counter or gauge `name` (its first series) in a `/metrics` text."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def free_tcp_port() -> int:
    return _free_port(socket.SOCK_STREAM)


def free_udp_port() -> int:
    return _free_port(socket.SOCK_DGRAM)


def free_udp_port_pair(attempts: int = 50) -> int:
    """A UDP port P with P + 1 free too (on loopback, now)."""
    for _ in range(attempts):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free pair of UDP ports")


def _free_port(kind: socket.SocketKind) -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for ephemeral ports (Chromium's and the SDKs' UDP sockets land here)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_udp_range(size: int = 100, attempts: int = 30) -> tuple[int, int]:
    """A range of `size` consecutive UDP ports on 127.0.0.1 that are all free right now.

    Chosen outside the kernel's ephemeral range, so the clients' own sockets (bound to ephemeral
    ports after this probe) cannot take ports the SFU will bind later.
    """
    low, high = ephemeral_port_range()
    candidates = [(10000, low - 1), (high + 1, 65535)]
    spans = [(a, b) for a, b in candidates if b - a + 1 >= size] or [(1024, 65535)]
    rng = random.Random()
    for _ in range(attempts):
        first, last = rng.choice(spans)
        start = rng.randrange(first, last - size + 2)
        socks: list[socket.socket] = []
        try:
            for port in range(start, start + size):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return start, start + size - 1
    raise RuntimeError(f"no free range of {size} UDP ports found in {attempts} attempts")


def write_config(
    path: Path,
    *,
    port: int,
    api_key: str,
    api_secret: str,
    rtc_port_range: tuple[int, int],
    log_level: str = "info",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a LiveKit-style config.yaml; `extra` merges one level deep (`{"room": {...}}`)."""
    config: dict[str, Any] = {
        "port": port,
        "bind_addresses": ["127.0.0.1"],
        "keys": {api_key: api_secret},
        "rtc": {
            "port_range_start": rtc_port_range[0],
            "port_range_end": rtc_port_range[1],
            "node_ip": "127.0.0.1",
        },
        # room.auto_create stays the SFU's default (false): tokens carry roomCreate instead
        "room": {"empty_timeout": 300},
        # every test client connects from 127.0.0.1, so the per-address cap would be a cap on
        # the whole test (tests of that cap set it); the test machine is shared (browsers,
        # Synapse, other suites), so a neighbour's burst would hold joins back by latency
        # (tests of that gate set it)
        "limits": {"max_sessions_per_ip": 0, "max_forward_latency_ms": 0},
        "logging": {"level": log_level},
    }
    if os.environ.get("SFU_TEST_RTC_WORKERS"):  # run a suite against media workers
        config["rtc"]["workers"] = int(os.environ["SFU_TEST_RTC_WORKERS"])
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


async def _wait_healthy(
    process: asyncio.subprocess.Process, url: str, log_path: Path, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    last_error = "no attempt"
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise SfuExitedError(
                    f"SFU exited during startup with code {process.returncode}; "
                    f"log tail:\n{log_tail(log_path)}"
                )
            try:
                response = await client.get(url)
                if response.status_code == 200:
                    return
                last_error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                last_error = repr(exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.1)
    raise SfuExitedError(
        f"SFU not healthy at {url} after {timeout_s:.0f} s (last: {last_error}); "
        f"log tail:\n{log_tail(log_path)}"
    )


async def stop_process(
    process: asyncio.subprocess.Process, timeout_s: float = STOP_TIMEOUT_S
) -> int:
    """SIGTERM the PID, wait (bounded), then SIGKILL its process group (it leads its own group)."""
    pid = process.pid
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), timeout_s)
    if process.returncode is None:
        print(f"[harness] pid {pid} ignored SIGTERM for {timeout_s:.0f} s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 5.0)
    # Anything the SFU forked and left behind is still in its process group.
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        pass
    else:
        print(f"[harness] pid {pid} left processes in its group; sending SIGKILL to the group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    assert process.returncode is not None
    return process.returncode


def prepare_config(
    workdir: Path,
    *,
    api_key: str,
    api_secret: str,
    log_level: str = "info",
    extra_config: dict[str, Any] | None = None,
    rtc_ports: int = 100,
) -> tuple[Path, int, tuple[int, int]]:
    """Pick free ports and write `workdir/sfu-config.yaml`; returns (path, port, rtc range)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_tcp_port()
    rtc_range = free_udp_range(rtc_ports)
    config_path = workdir / "sfu-config.yaml"
    write_config(
        config_path,
        port=port,
        api_key=api_key,
        api_secret=api_secret,
        rtc_port_range=rtc_range,
        log_level=log_level,
        extra=extra_config,
    )
    return config_path, port, rtc_range


@contextlib.asynccontextmanager
async def running_sfu(
    workdir: Path,
    *,
    api_key: str | None = None,
    api_secret: str | None = None,
    log_level: str = "info",
    extra_config: dict[str, Any] | None = None,
    rtc_ports: int = 100,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    env: dict[str, str] | None = None,
    command: Sequence[str] = SFU_COMMAND,
    expect_log_errors: Sequence[str | re.Pattern[str]] = (),
    expect_exit: bool = False,
) -> AsyncIterator[SfuInstance]:
    """Start the SFU on free loopback ports with a config in `workdir`; stop it by PID on exit.
    With `expect_exit` the test itself ends the process (a drain), which is then no failure.

    `command` is the argv, with `{config}` replaced by the config path (the harness self-test
    runs a stand-in server through it). `expect_log_errors` lists regexes for the errors the test
    provokes on purpose; any other logged error fails the test at teardown (see the module doc).
    """
    if api_key is None or api_secret is None:
        api_key, api_secret = new_api_key_pair()
    config_path, port, rtc_range = prepare_config(
        workdir,
        api_key=api_key,
        api_secret=api_secret,
        log_level=log_level,
        extra_config=extra_config,
        rtc_ports=rtc_ports,
    )
    log_path = workdir / "sfu.log"
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        argv = [arg.replace("{config}", str(config_path)) for arg in command]
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=REPO_ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fd,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    http_url = f"http://127.0.0.1:{port}"
    metrics_port = (extra_config or {}).get("prometheus_port") or port
    instance = SfuInstance(
        url=f"ws://127.0.0.1:{port}",
        api_key=api_key,
        api_secret=api_secret,
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        pid=process.pid,
        http_url=http_url,
        port=port,
        rtc_port_range=rtc_range,
        config_path=config_path,
        log_path=log_path,
        process=process,
    )
    died_early: int | None = None
    try:
        await _wait_healthy(process, f"{http_url}/healthz", log_path, startup_timeout_s)
        try:
            yield instance
        except BaseException as exc:
            # The test failed anyway: keep its error, and add what the SFU logged to it.
            await stop_process(process, stop_timeout_s)
            problems = instance.log_problems(expect_log_errors)
            if problems is not None:
                exc.add_note(problems)
            raise
        died_early = process.returncode
    finally:
        await stop_process(process, stop_timeout_s)
        print(f"---- SFU pid {process.pid} log tail ({log_path}) ----\n{log_tail(log_path)}")
    if died_early is not None and not expect_exit:
        raise SfuExitedError(
            f"SFU (pid {process.pid}) exited during the test with code {died_early}; "
            f"log tail:\n{log_tail(log_path)}"
        )
    problems = instance.log_problems(expect_log_errors)
    if problems is not None:
        raise SfuLogErrors(problems)
