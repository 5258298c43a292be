"""Debian's coturn (`turnserver`) as a real subprocess, with TURN REST credentials.

`running_coturn()` writes a config with ``use-auth-secret``/``static-auth-secret`` (the scheme
`sfu.turn` derives credentials for), listens on UDP and TCP on one address and port, relays from
`relay_ip` (loopback peers allowed, as the SFU under test is on 127.0.0.1), waits until the TCP
listener accepts, yields a `Coturn`, and stops the process by PID. A missing turnserver fails.
With `tls` (port, certificate, key) it also serves TURN over TLS (turns:) on that port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from tests.harness.process import spawn_logged
from tests.harness.sfu import free_udp_range, stop_process

TURNSERVER = shutil.which("turnserver") or "/usr/bin/turnserver"
STARTUP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class Coturn:
    host: str
    port: int
    secret: str
    realm: str
    relay_ports: tuple[int, int]
    log_path: Path
    pid: int
    tls_port: int | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def coturn_config(
    *,
    listen_ip: str,
    port: int,
    relay_ip: str,
    relay_ports: tuple[int, int],
    secret: str,
    realm: str,
    log_path: Path,
    tls: tuple[int, Path, Path] | None = None,
) -> str:
    """coturn's config; `tls` = (tls-listening-port, cert, pkey) adds TURN over TLS (turns:)."""
    tls_lines = (
        [
            f"tls-listening-port={tls[0]}",
            f"cert={tls[1]}",
            f"pkey={tls[2]}",
            "no-tlsv1",
            "no-tlsv1_1",
        ]
        if tls
        else ["no-tls"]
    )
    return "\n".join(
        [
            f"listening-ip={listen_ip}",
            f"listening-port={port}",
            f"relay-ip={relay_ip}",
            f"min-port={relay_ports[0]}",
            f"max-port={relay_ports[1]}",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            f"realm={realm}",
            "fingerprint",
            *tls_lines,
            "no-dtls",
            "no-cli",
            "no-multicast-peers",
            "allow-loopback-peers",
            f"log-file={log_path}",
            "simple-log",
            "verbose",
            "",
        ]
    )


def _prepare(
    workdir: Path, listen_ip: str, port: int, relay_ip: str, tls: tuple[int, Path, Path] | None
) -> tuple[str, str, tuple[int, int], Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(24)
    realm = "matrix-sfu.test"
    relay_ports = free_udp_range(40)
    log_path = workdir / "turnserver.log"
    config = workdir / "turnserver.conf"
    config.write_text(
        coturn_config(
            listen_ip=listen_ip,
            port=port,
            relay_ip=relay_ip,
            relay_ports=relay_ports,
            secret=secret,
            realm=realm,
            log_path=log_path,
            tls=tls,
        )
    )
    return secret, realm, relay_ports, log_path, config


@contextlib.asynccontextmanager
async def running_coturn(
    workdir: Path,
    *,
    listen_ip: str,
    port: int,
    relay_ip: str = "127.0.0.1",
    tls: tuple[int, Path, Path] | None = None,
) -> AsyncIterator[Coturn]:
    if not os.access(TURNSERVER, os.X_OK):
        raise AssertionError(f"{TURNSERVER} is missing: run `make system-deps` (Debian coturn)")
    secret, realm, relay_ports, log_path, config = _prepare(workdir, listen_ip, port, relay_ip, tls)
    argv = [TURNSERVER, "-c", str(config), "--pidfile", str(workdir / "turnserver.pid")]
    process, stdout_log = await spawn_logged(
        argv, env=dict(os.environ), cwd=workdir, workdir=workdir, name="turnserver.stdout"
    )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        listeners = [port, *([tls[0]] if tls else [])]
        while listeners:
            if process.returncode is not None:
                raise AssertionError(
                    f"turnserver exited with {process.returncode}:\n"
                    f"{stdout_log.read_text(errors='replace')[-3000:]}"
                )
            with contextlib.suppress(OSError):
                socket.create_connection((listen_ip, listeners[0]), 0.5).close()
                listeners.pop(0)
                continue
            if time.monotonic() > deadline:
                raise AssertionError(f"turnserver not listening on {listen_ip}:{listeners}")
            await asyncio.sleep(0.1)
        yield Coturn(
            listen_ip,
            port,
            secret,
            realm,
            relay_ports,
            log_path,
            process.pid,
            tls[0] if tls else None,
        )
    finally:
        await stop_process(process, 5.0)
