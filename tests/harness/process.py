"""Starting a test's helper process: its own session (so stop_process can end its group), no
stdin, stdout and stderr into one log file in its work directory (`spawn_logged`), or stdin and
stdout piped to the test, stderr to a log file (`spawn_piped`)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path


def _open_log(workdir: Path, name: str) -> tuple[Path, int]:
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    return log_path, os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


async def spawn_logged(
    argv: list[str], *, env: dict[str, str], cwd: Path, workdir: Path, name: str
) -> tuple[asyncio.subprocess.Process, Path]:
    """Start argv in its own session, stdout and stderr to workdir/<name>.log."""
    log_path, log_fd = _open_log(workdir, name)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_fd,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    return process, log_path


async def spawn_piped(argv: list[str], *, cwd: Path, log_path: Path) -> asyncio.subprocess.Process:
    """Start argv in its own session, stdin and stdout piped, stderr to `log_path`."""
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_fd,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
