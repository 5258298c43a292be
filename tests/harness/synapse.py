"""A real Synapse homeserver for tests, on loopback, with sqlite and federation closed.

``start_synapse(data_dir)`` writes a config (fresh secrets, signing key and a self-signed TLS
certificate), starts ``python -m synapse.app.homeserver`` from ``.venv-synapse`` (or
``$SYNAPSE_PYTHON``) on free loopback ports and waits until it answers. It raises
:class:`SynapseError` with the end of Synapse's log when it cannot start: tests that need
Synapse fail, they never skip.

MatrixRTC is wired as an operator would wire it: Synapse's ``matrix_rtc`` and
``experimental_features`` carry what ``python -m auth_service well-known --service-url
RTC_SERVICE_URL`` prints for ``homeserver.yaml``, so ``GET
/_matrix/client/unstable/org.matrix.msc4143/rtc/transports`` names that URL.

Listeners: a plain-HTTP client listener (``client`` + ``openid``) and a TLS listener serving
``openid`` only. The server name is ``localhost:<tls port>``, so federation discovery of that
name goes straight to the TLS listener (an explicit port needs no DNS or well-known).

Use the session fixture ``synapse`` from a conftest (``from tests.harness.synapse import
synapse``); one Synapse serves the whole test session, however many conftests import it, and is
stopped by PID at the end.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from auth_service.__main__ import synapse_config

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PYTHON = REPO_ROOT / ".venv-synapse" / "bin" / "python"
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0
GENEROUS_RATE = {"per_second": 1000, "burst_count": 1000}
RTC_SERVICE_URL = "https://rtc.localhost.test/livekit/jwt"
"""The auth service URL Synapse advertises as its MatrixRTC transport."""


class SynapseError(RuntimeError):
    """Synapse could not be started or answered unexpectedly."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_self_signed_cert(
    cert_path: Path, key_path: Path, names: list[str], ips: list[str] | None = None
) -> None:
    """Write a self-signed certificate (PEM) valid for ``names`` and ``ips``, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or []]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@dataclass(frozen=True)
class MatrixUser:
    """A logged-in user on the test homeserver."""

    user_id: str
    localpart: str
    password: str
    device_id: str
    access_token: str


@dataclass
class Synapse:
    """A running test homeserver."""

    data_dir: Path
    server_name: str
    http_port: int
    tls_port: int
    tls_cert: Path
    registration_shared_secret: str
    process: subprocess.Popen[bytes]
    log_path: Path
    python: Path = DEFAULT_PYTHON
    _users: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        """Synapse's process id."""
        return self.process.pid

    @property
    def client_url(self) -> str:
        """Base URL of the plain-HTTP client (and openid) listener."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def federation_url(self) -> str:
        """Base URL of the TLS openid listener (self-signed, see ``tls_cert``)."""
        return f"https://127.0.0.1:{self.tls_port}"

    def log_tail(self, lines: int = 40) -> str:
        """The end of Synapse's log, for failure messages."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.client_url, timeout=30.0)

    def register(self, localpart: str, password: str | None = None, *, admin: bool = False) -> str:
        """Create a user with the shared-secret admin API; return its user ID."""
        password = password or secrets.token_urlsafe(12)
        with self._client() as client:
            nonce = client.get("/_synapse/admin/v1/register").json()["nonce"]
            message = b"\x00".join(
                [
                    nonce.encode(),
                    localpart.encode(),
                    password.encode(),
                    b"admin" if admin else b"notadmin",
                ]
            )
            mac = hmac.new(
                self.registration_shared_secret.encode(), message, hashlib.sha1
            ).hexdigest()
            response = client.post(
                "/_synapse/admin/v1/register",
                json={
                    "nonce": nonce,
                    "username": localpart,
                    "password": password,
                    "admin": admin,
                    "mac": mac,
                },
            )
        if response.status_code != 200:
            raise SynapseError(f"registering {localpart}: {response.status_code} {response.text}")
        self._users[localpart] = password
        return str(response.json()["user_id"])

    def login(self, localpart: str, device_id: str, password: str | None = None) -> MatrixUser:
        """Log in with a chosen device ID."""
        password = password or self._users[localpart]
        with self._client() as client:
            response = client.post(
                "/_matrix/client/v3/login",
                json={
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": localpart},
                    "password": password,
                    "device_id": device_id,
                },
            )
        if response.status_code != 200:
            raise SynapseError(f"login of {localpart}: {response.status_code} {response.text}")
        body = response.json()
        return MatrixUser(
            body["user_id"], localpart, password, body["device_id"], body["access_token"]
        )

    def create_user(self, localpart: str, device_id: str) -> MatrixUser:
        """Register ``localpart`` and log in on ``device_id``."""
        password = secrets.token_urlsafe(12)
        self.register(localpart, password)
        return self.login(localpart, device_id, password)

    def openid_token(self, user: MatrixUser) -> dict[str, Any]:
        """A fresh OpenID token for ``user`` (``/openid/request_token``)."""
        with self._client() as client:
            response = client.post(
                f"/_matrix/client/v3/user/{quote(user.user_id, safe='')}/openid/request_token",
                json={},
                headers={"Authorization": f"Bearer {user.access_token}"},
            )
        if response.status_code != 200:
            raise SynapseError(f"OpenID token for {user.user_id}: {response.text}")
        return dict(response.json())

    def config(self) -> dict[str, Any]:
        """The ``homeserver.yaml`` Synapse runs with."""
        loaded = yaml.safe_load((self.data_dir / "homeserver.yaml").read_text())
        assert isinstance(loaded, dict)
        return loaded

    def rtc_transports(self, user: MatrixUser) -> httpx.Response:
        """``GET .../org.matrix.msc4143/rtc/transports`` as ``user`` (what Element Call reads)."""
        with self._client() as client:
            return client.get(
                "/_matrix/client/unstable/org.matrix.msc4143/rtc/transports",
                headers={"Authorization": f"Bearer {user.access_token}"},
            )

    def expire_openid_token(self, access_token: str) -> None:
        """Make an issued OpenID token expired, in Synapse's own database."""
        db = sqlite3.connect(self.data_dir / "homeserver.db", timeout=10)
        try:
            with db:
                cursor = db.execute(
                    "UPDATE open_id_tokens SET ts_valid_until_ms = 0 WHERE token = ?",
                    (access_token,),
                )
        finally:
            db.close()
        if cursor.rowcount != 1:
            raise SynapseError(f"no OpenID token {access_token!r} to expire")

    def restart(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Stop Synapse and start it again on the same data, ports and config."""
        self.stop()
        self.process = _launch(self.python, self.data_dir / "homeserver.yaml", self.data_dir)
        _wait_until_up(self, timeout)

    def stop(self) -> None:
        """Stop Synapse by PID: SIGTERM, then SIGKILL if it does not exit."""
        if self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(STOP_TIMEOUT_SECONDS)


def _signing_key() -> str:
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 a_test {seed}\n"


def _config(data_dir: Path, http_port: int, tls_port: int, secret: str) -> dict[str, Any]:
    limit = dict(GENEROUS_RATE)
    base: dict[str, Any] = {
        "server_name": f"localhost:{tls_port}",
        "pid_file": str(data_dir / "homeserver.pid"),
        "public_baseurl": f"http://127.0.0.1:{http_port}/",
        "listeners": [
            {
                "port": http_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "resources": [{"names": ["client", "openid"], "compress": False}],
            },
            {
                "port": tls_port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": True,
                "resources": [{"names": ["openid"], "compress": False}],
            },
        ],
        "tls_certificate_path": str(data_dir / "tls.crt"),
        "tls_private_key_path": str(data_dir / "tls.key"),
        "database": {"name": "sqlite3", "args": {"database": str(data_dir / "homeserver.db")}},
        "log_config": str(data_dir / "log.yaml"),
        "media_store_path": str(data_dir / "media_store"),
        "signing_key_path": str(data_dir / "signing.key"),
        "registration_shared_secret": secret,
        "macaroon_secret_key": secrets.token_urlsafe(32),
        "form_secret": secrets.token_urlsafe(32),
        "report_stats": False,
        "enable_registration": False,
        "bcrypt_rounds": 4,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_domain_whitelist": [],
        "presence": {"enabled": False},
        "default_room_version": "11",
        "max_event_delay_duration": "24h",
        "experimental_features": {
            "msc4143_enabled": True,
            "msc3266_enabled": True,
            "msc4222_enabled": True,
        },
        "rc_message": limit,
        "rc_registration": limit,
        "rc_login": {"address": limit, "account": limit, "failed_attempts": limit},
        "rc_joins": {"local": limit, "remote": limit},
        "rc_delayed_event_mgmt": limit,
    }
    return _deep_merge(base, synapse_config(RTC_SERVICE_URL))


def _log_config(log_path: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "formatter": "plain",
                "filename": str(log_path),
            }
        },
        "loggers": {"synapse.storage.SQL": {"level": "WARNING"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def start_synapse(
    data_dir: Path,
    *,
    extra_config: dict[str, Any] | None = None,
    app_service_config_files: Callable[[str], list[Path]] | None = None,
    federation: bool = False,
    python: Path | None = None,
    timeout: float = START_TIMEOUT_SECONDS,
) -> Synapse:
    """Configure and start Synapse in ``data_dir``; raise :class:`SynapseError` on failure.

    ``app_service_config_files``, given the server name, writes the application-service
    registrations Synapse is to load and returns their paths (each ``url`` must answer by the
    time Synapse pushes events, or Synapse backs off for a while).

    ``federation`` opens federation on loopback: the TLS listener also serves ``federation``
    and ``keys``, any destination is allowed, 127.0.0.1 is not blocked and the other side's
    self-signed certificate is not checked (test homeservers only).
    """
    python = python or Path(os.environ.get("SYNAPSE_PYTHON", str(DEFAULT_PYTHON)))
    if not python.exists():
        raise SynapseError(f"no Synapse interpreter at {python}; run `make synapse-venv`")
    data_dir.mkdir(parents=True, exist_ok=True)
    http_port, tls_port = free_port(), free_port()
    secret = secrets.token_urlsafe(32)
    write_self_signed_cert(
        data_dir / "tls.crt", data_dir / "tls.key", ["localhost"], ["127.0.0.1", "::1"]
    )
    (data_dir / "signing.key").write_text(_signing_key())
    log_path = data_dir / "homeserver.log"
    (data_dir / "log.yaml").write_text(yaml.safe_dump(_log_config(log_path)))
    config = _deep_merge(_config(data_dir, http_port, tls_port, secret), extra_config or {})
    if federation:
        config["listeners"][1]["resources"] = [
            {"names": ["federation", "keys", "openid"], "compress": False}
        ]
        config.pop("federation_domain_whitelist", None)
        config["ip_range_whitelist"] = ["127.0.0.1"]
        config["federation_verify_certificates"] = False
    if app_service_config_files:
        paths = app_service_config_files(str(config["server_name"]))
        config["app_service_config_files"] = [str(path) for path in paths]
    config_path = data_dir / "homeserver.yaml"
    config_path.write_text(yaml.safe_dump(config))

    server = Synapse(
        data_dir=data_dir,
        server_name=str(config["server_name"]),
        http_port=http_port,
        tls_port=tls_port,
        tls_cert=data_dir / "tls.crt",
        registration_shared_secret=secret,
        process=_launch(python, config_path, data_dir),
        log_path=log_path,
        python=python,
    )
    _wait_until_up(server, timeout)
    return server


def _launch(python: Path, config_path: Path, data_dir: Path) -> subprocess.Popen[bytes]:
    stdout = (data_dir / "stdout.log").open("ab")
    process = subprocess.Popen(
        [str(python), "-m", "synapse.app.homeserver", "-c", str(config_path)],
        cwd=data_dir,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stdout.close()
    return process


def _wait_until_up(server: Synapse, timeout: float) -> None:
    process, data_dir = server.process, server.data_dir
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=2.0) as client:
        while True:
            if process.poll() is not None:
                output = (data_dir / "stdout.log").read_text(errors="replace")[-4000:]
                raise SynapseError(
                    f"Synapse exited with status {process.returncode} during start-up\n"
                    f"{output}\n{server.log_tail()}"
                )
            try:
                if client.get(f"{server.client_url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                server.stop()
                raise SynapseError(
                    f"Synapse did not answer within {timeout} s\n{server.log_tail()}"
                )
            time.sleep(0.1)


_shared: Synapse | None = None


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    """One Synapse for the whole test session, stopped by PID when the session ends."""
    global _shared
    if _shared is not None and _shared.process.poll() is None:
        yield _shared
        return
    server = start_synapse(tmp_path_factory.mktemp("synapse"))
    _shared = server
    try:
        yield server
    finally:
        _shared = None
        server.stop()
