"""Fail tests on unhandled exceptions that the SFU or the auth service only logged.

Both services keep running after a handler raises: the signal session logs "request failed" with a
traceback, the packet path logs and drops, asyncio logs "Task exception was never retrieved". A
test that only looks at the visible outcome passes through all of that, so every process and every
in-process test is scanned at teardown for *problems*:

- a log record at ERROR or CRITICAL level (the services' `%(asctime)s %(levelname)s ...` format,
  uvicorn's `ERROR:    ...` format, or, in process, any record at those levels);
- any record carrying a traceback (`Traceback (most recent call last):`, or `exc_info`);
- asyncio's "Task exception was never retrieved", "Exception in callback", "... exception was
  never retrieved", Python's "Exception ignored in" and "coroutine ... was never awaited".

A test that provokes an error on purpose declares it, and only it: `expect_log_errors=[regex]` on
`running_sfu`, or `@pytest.mark.expect_log_errors(regex, ...)` for in-process logging (registered in
tests/conftest.py). Each declared pattern must match at least one problem (a stale allow-list
fails too), and every problem must match a declared pattern. There is no switch that turns the
check off.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# A new record starts at a line in the services' basicConfig format, in uvicorn's default format,
# or (for output printed without a logger) at a warning line of Python's own `warnings` module.
_RECORD_START = re.compile(
    r"^(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) "
    r"|(?P<uvlevel>DEBUG|INFO|WARNING|ERROR|CRITICAL|TRACE):\s"
    r"|\S.*:\d+: \w*Warning: )"
)
_BAD_LEVELS = frozenset({"ERROR", "CRITICAL"})
TRIGGERS: tuple[str, ...] = (
    "Traceback (most recent call last)",
    "Task exception was never retrieved",
    "Exception in callback",
    "exception was never retrieved",
    "Exception ignored in",
    "was never awaited",
)
MAX_LINES_PER_PROBLEM = 60
MAX_PROBLEMS_SHOWN = 10


@dataclass(frozen=True)
class LogProblem:
    """One log record that reports an error: where it starts (1-based line) and its full text."""

    line: int
    text: str


class UnexpectedLogErrors(AssertionError):
    """A process or a test logged an error it did not declare (or a declared one never came)."""


def _record_is_bad(level: str | None, text: str) -> bool:
    return level in _BAD_LEVELS or any(trigger in text for trigger in TRIGGERS)


def find_log_problems(text: str) -> list[LogProblem]:
    """Split a log into records (a start line and its continuation lines) and keep the bad ones.

    A traceback printed after a record belongs to it (that is how `exc_info` prints), so the
    report shows the message that introduced it.
    """
    problems: list[LogProblem] = []
    start = 0
    level: str | None = None
    lines: list[str] = []

    def close() -> None:
        body = "\n".join(lines)
        if lines and _record_is_bad(level, body):
            problems.append(LogProblem(start + 1, body))

    for number, line in enumerate(text.splitlines()):
        match = _RECORD_START.match(line)
        if match is not None:
            close()
            start, lines = number, [line]
            level = match.group("level") or match.group("uvlevel")
        else:
            if not lines:
                start, level = number, None
            lines.append(line)
    close()
    return problems


def record_problem(record: logging.LogRecord, formatter: logging.Formatter) -> LogProblem | None:
    """The problem an in-process log record reports, or None if it reports none."""
    text = formatter.format(record)
    if record.levelno >= logging.ERROR or record.exc_info or any(t in text for t in TRIGGERS):
        return LogProblem(
            record.lineno, f"{record.name} ({record.pathname}:{record.lineno}) {text}"
        )
    return None


def unexpected(
    problems: Iterable[LogProblem], expected: Sequence[str | re.Pattern[str]]
) -> tuple[list[LogProblem], list[str]]:
    """(problems no pattern allows, declared patterns that matched no problem)."""
    patterns = [re.compile(p) if isinstance(p, str) else p for p in expected]
    used = [False] * len(patterns)
    left: list[LogProblem] = []
    for problem in problems:
        allowed = False
        for index, pattern in enumerate(patterns):
            if pattern.search(problem.text):
                used[index] = allowed = True
        if not allowed:
            left.append(problem)
    unused = [p.pattern for p, hit in zip(patterns, used, strict=True) if not hit]
    return left, unused


def describe(source: str, problems: Sequence[LogProblem], unused: Sequence[str]) -> str:
    """A failure message: each unexpected problem (truncated), then the unmatched expectations."""
    parts: list[str] = []
    if problems:
        parts.append(f"{source} logged {len(problems)} unexpected error(s):")
        for problem in problems[:MAX_PROBLEMS_SHOWN]:
            body = problem.text.splitlines()
            if len(body) > MAX_LINES_PER_PROBLEM:
                body = [*body[:MAX_LINES_PER_PROBLEM], f"... ({len(body)} lines)"]
            parts.append(f"--- line {problem.line} ---\n" + "\n".join(body))
        if len(problems) > MAX_PROBLEMS_SHOWN:
            parts.append(f"... and {len(problems) - MAX_PROBLEMS_SHOWN} more")
    for pattern in unused:
        parts.append(f"{source}: expected a logged error matching {pattern!r}; none appeared")
    return "\n".join(parts)


def check(
    source: str, problems: Iterable[LogProblem], expected: Sequence[str | re.Pattern[str]] = ()
) -> str | None:
    """None when the problems are exactly the declared ones; otherwise the failure message."""
    left, unused = unexpected(problems, expected)
    if not left and not unused:
        return None
    return describe(source, left, unused)


def check_log_text(
    source: str, text: str, expected: Sequence[str | re.Pattern[str]] = ()
) -> str | None:
    return check(source, find_log_problems(text), expected)


# The LiveKit Python SDK is a client the tests drive, not the code under test: its Rust core logs
# its own teardown races at ERROR (e.g. a renegotiation started as the room disconnects), and what
# the SFU does to it shows through the SDK's API. Everything else in process is checked.
CLIENT_LOGGERS = ("livekit",)


def _is_client_logger(name: str) -> bool:
    return any(name == c or name.startswith(c + ".") for c in CLIENT_LOGGERS)


class ProblemCollector(logging.Handler):
    """A root-logger handler that keeps every in-process record reporting a problem (except the
    test clients' own, `CLIENT_LOGGERS`)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.problems: list[LogProblem] = []
        self._formatter = logging.Formatter("%(levelname)s %(name)s: %(message)s")

    def emit(self, record: logging.LogRecord) -> None:
        if _is_client_logger(record.name):
            return
        try:
            problem = record_problem(record, self._formatter)
        except Exception:  # a record that cannot be formatted is itself a problem
            problem = LogProblem(record.lineno, f"unformattable record {record.msg!r}")
        if problem is not None:
            self.problems.append(problem)
