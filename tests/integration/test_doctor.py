"""scripts/doctor.py against real local services: the dev setup (SFU and auth service, as
`make run` starts them), Synapse with MatrixRTC wired, and coturn; first as configured (no
problem), then with the common misconfigurations, each named in its own PROBLEM line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness.coturn import running_coturn
from tests.harness.devrun import dev_run
from tests.harness.sfu import REPO_ROOT, free_tcp_port, free_udp_port, running_sfu
from tests.harness.synapse import Synapse
from tests.harness.synapse import synapse as synapse  # the session fixture

pytestmark = pytest.mark.slow


def doctor(*args: str) -> tuple[int, list[str]]:
    result = subprocess.run(
        [sys.executable, "scripts/doctor.py", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    print(result.stdout, result.stderr)
    return result.returncode, [
        line for line in result.stdout.splitlines() if line.startswith("PROBLEM")
    ]


async def test_doctor_finds_each_misconfiguration(tmp_path: Path, synapse: Synapse) -> None:
    user = synapse.create_user("doctor", "DOCTORDEV")
    async with (
        dev_run(tmp_path) as (ports, _printed),
        running_coturn(tmp_path / "coturn", listen_ip="127.0.0.1", port=free_tcp_port()) as turn,
    ):
        auth = f"http://127.0.0.1:{ports['AUTH_PORT']}"
        sfu = f"ws://127.0.0.1:{ports['SFU_PORT']}"
        good = [
            "--homeserver",
            synapse.client_url,
            "--access-token",
            user.access_token,
            "--service-url",
            auth,
            "--sfu-url",
            sfu,
            "--turn",
            f"127.0.0.1:{turn.port}",
        ]
        assert doctor(*good) == (0, [])

        # a homeserver without msc4143 (here: something else answering at that URL)
        code, problems = doctor("--homeserver", auth)
        assert code == 1 and len(problems) == 1 and "msc4143_enabled" in problems[0], problems
        # a reverse proxy that keeps its path prefix in front of the auth service
        code, problems = doctor("--service-url", f"{auth}/livekit/jwt")
        assert len(problems) >= 1 and "strip its path prefix" in " ".join(problems), problems
        # an auth service that is not running
        code, problems = doctor("--service-url", f"http://127.0.0.1:{free_tcp_port()}")
        assert problems and "unreachable" in problems[0], problems
        # the SFU URL given as http://, or with a path the SFU does not serve
        _, problems = doctor("--sfu-url", f"http://127.0.0.1:{ports['SFU_PORT']}")
        assert problems and "not a ws:// or wss:// URL" in problems[0], problems
        _, problems = doctor("--sfu-url", f"{sfu}/livekit/sfu")
        assert problems and "/rtc/validate is 404" in problems[0], problems
        # TURN: nothing answers STUN there (the SFU's own UDP port does not answer bare STUN)
        _, problems = doctor("--turn", f"127.0.0.1:{free_udp_port()}")
        assert problems and "no STUN answer" in problems[0], problems
        _, problems = doctor("--turn", "turn.example.org")
        assert problems and "expected host:port" in problems[0], problems


async def test_doctor_checks_media_with_a_token(tmp_path: Path) -> None:
    """--token: ICE and DTLS to the SFU's one UDP port, from the doctor's side; an SFU that
    advertises an address nobody reaches (a wrong rtc.node_ip) is a PROBLEM naming it."""
    good = {"rtc": {"udp_port": free_udp_port()}}
    async with running_sfu(tmp_path / "good", extra_config=good) as sfu:
        code, problems = doctor("--sfu-url", sfu.url, "--token", sfu.token("doc", "doctor-room"))
        assert (code, problems) == (0, [])
    unreachable = {"rtc": {"udp_port": free_udp_port(), "node_ip": "203.0.113.10"}}
    async with running_sfu(tmp_path / "bad", extra_config=unreachable) as sfu:
        code, problems = doctor("--sfu-url", sfu.url, "--token", sfu.token("doc", "doctor-room"))
    assert code == 1 and len(problems) == 1, problems
    assert "no ICE/DTLS" in problems[0] and "203.0.113.10" in problems[0], problems
    assert "rtc.node_ip" in problems[0], problems
