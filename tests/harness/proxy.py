"""The TLS front of deploy/: Debian's Caddy running deploy/Caddyfile itself, a test certificate,
and the auth service as the real process (`python -m auth_service`, configured as compose does).

`write_test_certificate()` makes one self-signed certificate for the RTC and TURN names and
returns its SPKI hash, the value of Chromium's `--ignore-certificate-errors-spki-list` (the
browser accepts that one key and nothing else). `running_caddy()` sets the Caddyfile's
environment (TLS_MODE=files, the upstreams, free ports, the admin API off, Caddy's storage in the
work directory), waits until TLS is served and stops Caddy by PID. `running_auth_service()`
starts the auth service with LIVEKIT_KEY_FILE and LIVEKIT_URL as in docker-compose.yml.
A missing caddy binary fails the test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import shutil
import ssl
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness.process import spawn_logged
from tests.harness.sfu import REPO_ROOT, free_tcp_port, log_tail, stop_process
from tests.harness.synapse import write_self_signed_cert

CADDY = shutil.which("caddy") or "/usr/bin/caddy"
CADDYFILE = REPO_ROOT / "deploy" / "Caddyfile"
RTC_DOMAIN = "rtc.matrix-sfu.test"
TURN_DOMAIN = "turn.matrix-sfu.test"
STARTUP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class TestCertificate:
    cert: Path
    key: Path
    spki_sha256: str  # base64 of SHA-256 over the DER SubjectPublicKeyInfo

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def write_test_certificate(
    directory: Path, names: tuple[str, ...] = (RTC_DOMAIN, TURN_DOMAIN), ips: tuple[str, ...] = ()
) -> TestCertificate:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "tls.crt", directory / "tls.key"
    write_self_signed_cert(cert, key, list(names), list(ips))
    return TestCertificate(cert, key, spki_sha256(cert))


def spki_sha256(cert: Path) -> str:
    """base64 of SHA-256 over the certificate's DER SubjectPublicKeyInfo (Chromium's form)."""
    public_key = x509.load_pem_x509_certificate(cert.read_bytes()).public_key()
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def chromium_flags(certificate: TestCertificate, host_ip: str = "127.0.0.1") -> list[str]:
    """Chromium resolves both test names to `host_ip` and trusts the test certificate's key."""
    return [
        f"--host-resolver-rules=MAP {RTC_DOMAIN} {host_ip}, MAP {TURN_DOMAIN} {host_ip}",
        f"--ignore-certificate-errors-spki-list={certificate.spki_sha256}",
    ]


@dataclass(frozen=True)
class Caddy:
    https_port: int
    pid: int
    log_path: Path

    @property
    def origin(self) -> str:
        return f"https://{RTC_DOMAIN}:{self.https_port}"


async def _wait_ready(
    process: asyncio.subprocess.Process,
    probe: Callable[[], Awaitable[str | None]],
    what: str,
    log_path: Path,
) -> None:
    """Poll `probe` (None when ready, else what it saw) until ready, the process exits or the
    startup timeout passes."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last: str | None = "no attempt"
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{log_tail(log_path)}")
        last = await probe()
        if last is None:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what} not ready ({last}):\n{log_tail(log_path)}")


def _healthz_over_tls(
    port: int, certificate: TestCertificate
) -> Callable[[], Awaitable[str | None]]:
    """GET https://RTC_DOMAIN:port/healthz, the name resolved to 127.0.0.1 by hand."""
    context = certificate.ssl_context()
    request = f"GET /healthz HTTP/1.1\r\nHost: {RTC_DOMAIN}:{port}\r\nConnection: close\r\n\r\n"

    async def probe() -> str | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=RTC_DOMAIN),
                2.0,
            )
            writer.write(request.encode())
            status = await asyncio.wait_for(reader.readline(), 2.0)
            writer.close()
        except (OSError, ssl.SSLError, TimeoutError) as exc:
            return repr(exc)
        return None if status.split()[1:2] == [b"200"] else status.decode(errors="replace")

    return probe


@contextlib.asynccontextmanager
async def running_caddy(
    workdir: Path,
    certificate: TestCertificate,
    *,
    auth_upstream: str,
    sfu_upstream: str,
    https_port: int | None = None,
) -> AsyncIterator[Caddy]:
    """deploy/Caddyfile with TLS_MODE=files, in front of the given upstreams."""
    if not os.access(CADDY, os.X_OK):
        raise AssertionError(f"{CADDY} is missing: run `make system-deps` (Debian caddy)")
    https_port = https_port or free_tcp_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "XDG_CONFIG_HOME": str(workdir / "config"),
        "XDG_DATA_HOME": str(workdir / "data"),
        "RTC_DOMAIN": RTC_DOMAIN,
        "TURN_DOMAIN": TURN_DOMAIN,
        "TLS_MODE": "files",
        "TLS_CERT_FILE": str(certificate.cert),
        "TLS_KEY_FILE": str(certificate.key),
        "AUTH_UPSTREAM": auth_upstream,
        "SFU_UPSTREAM": sfu_upstream,
        "HTTP_PORT": str(free_tcp_port()),
        "HTTPS_PORT": str(https_port),
        "CADDY_ADMIN": "off",
    }
    argv = [CADDY, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    process, log_path = await spawn_logged(
        argv, env=env, cwd=REPO_ROOT, workdir=workdir, name="caddy"
    )
    try:
        await _wait_ready(process, _healthz_over_tls(https_port, certificate), "caddy", log_path)
        yield Caddy(https_port, process.pid, log_path)
    finally:
        await stop_process(process, 10.0)


@dataclass(frozen=True)
class AuthService:
    url: str  # http://127.0.0.1:PORT, the upstream Caddy proxies /livekit/jwt/* to
    port: int
    pid: int
    log_path: Path


def _write_keys(workdir: Path, api_key: str, api_secret: str) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    keys = workdir / "livekit_keys"
    keys.write_text(f"{api_key}: {api_secret}\n")
    return keys


@contextlib.asynccontextmanager
async def running_auth_service(
    workdir: Path,
    *,
    api_key: str,
    api_secret: str,
    livekit_url: str,
    full_access_homeservers: str,
    homeserver_urls: str = "",
    sfu_api_url: str = "",
    port: int | None = None,
) -> AsyncIterator[AuthService]:
    """The auth service as compose runs it (LIVEKIT_KEY_FILE, LIVEKIT_URL, LIVEKIT_JWT_BIND)."""
    port = port or free_tcp_port()
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LIVEKIT_URL": livekit_url,
        "LIVEKIT_KEY_FILE": str(_write_keys(workdir, api_key, api_secret)),
        "LIVEKIT_FULL_ACCESS_HOMESERVERS": full_access_homeservers,
        "LIVEKIT_JWT_BIND": f"127.0.0.1:{port}",
    }
    if homeserver_urls:
        env["LIVEKIT_AUTH_HOMESERVER_URLS"] = homeserver_urls
    if sfu_api_url:
        env["LIVEKIT_SFU_API_URL"] = sfu_api_url
    argv = [sys.executable, "-m", "auth_service"]
    process, log_path = await spawn_logged(
        argv, env=env, cwd=REPO_ROOT, workdir=workdir, name="auth"
    )
    url = f"http://127.0.0.1:{port}"

    async def healthy() -> str | None:
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                status = (await client.get(f"{url}/healthz")).status_code
        except httpx.HTTPError as exc:
            return repr(exc)
        return None if status == 200 else f"HTTP {status}"

    try:
        await _wait_ready(process, healthy, "the auth service", log_path)
        yield AuthService(url, port, process.pid, log_path)
    finally:
        code = await stop_process(process, 10.0)
        print(f"auth service exited {code}; log tail:\n{log_tail(log_path, 40)}")
