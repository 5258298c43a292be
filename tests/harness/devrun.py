"""`scripts/dev_run.py` (`make run`) as a real subprocess on free ports, for tests that need the
whole dev setup (SFU, auth service, meet page) the way a newcomer starts it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from tests.harness.sfu import REPO_ROOT, free_tcp_port, free_udp_port, stop_process

WAIT_S = 40.0


@contextlib.asynccontextmanager
async def dev_run(tmp_path: Path) -> AsyncIterator[tuple[dict[str, int], str]]:
    """scripts/dev_run.py on free ports; yields (ports, what it printed up to "Ctrl-C")."""
    ports = {
        "SFU_PORT": free_tcp_port(),
        "AUTH_PORT": free_tcp_port(),
        "MEET_PORT": free_tcp_port(),
        "UDP_PORT": free_udp_port(),
    }
    log = tmp_path / "dev_run.log"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "scripts/dev_run.py",
        cwd=REPO_ROOT,
        env={**os.environ, **{k: str(v) for k, v in ports.items()}, "PYTHONUNBUFFERED": "1"},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert process.stdout is not None
    printed: list[str] = []
    try:
        deadline = time.monotonic() + WAIT_S
        while not printed or "Ctrl-C stops both services." not in printed[-1]:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "".join(printed)[-3000:]
            line = await asyncio.wait_for(process.stdout.readline(), remaining)
            assert line, f"dev_run exited ({process.returncode}):\n{''.join(printed)[-3000:]}"
            printed.append(line.decode(errors="replace"))
        drain = asyncio.create_task(_drain(process.stdout, log))
        yield ports, "".join(printed)
    finally:
        code = await stop_process(process, 15.0)
        print(f"dev_run exited {code}")
    drain.cancel()
    assert code == 0, log.read_text(errors="replace")[-3000:]


async def _drain(stream: asyncio.StreamReader, log: Path) -> None:
    with log.open("ab") as out:
        while chunk := await stream.read(65536):
            out.write(chunk)
