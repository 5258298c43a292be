"""Self-test of tests/harness/logcheck.py: which log records count as errors, and the allow-list."""

from __future__ import annotations

import logging

import pytest

from tests.harness import logcheck

CLEAN = """\
INFO:     Started server process [42]
2026-12-01 12:00:00,001 INFO sfu.app: SFU node n1 ready
2026-12-01 12:00:00,002 WARNING sfu.config: config key rtc.tcp_port is a LiveKit setting this SFU ignores
2026-12-01 12:00:03,004 INFO sfu.signal.session: participant bob: unknown track TR_x
INFO:     Shutting down
"""

REQUEST_FAILED = """\
2026-12-01 12:00:01,000 WARNING sfu.signal.session: participant a: request failed: 'x'
Traceback (most recent call last):
  File "/src/sfu/signal/session.py", line 136, in run
    await self.dispatch(participant, request)
KeyError: 'x'
"""

ASYNCIO = """\
2026-12-01 12:00:02,000 ERROR asyncio: Task exception was never retrieved
future: <Task finished name='Task-7' coro=<Participant._rtcp_loop() done> exception=ValueError()>
"""

UVICORN = """\
ERROR:    Exception in ASGI application
Traceback (most recent call last):
  File "/x/uvicorn/protocols/http/h11_impl.py", line 1, in run_asgi
TypeError: boom
"""

BARE = """\
Exception ignored in: <function Thing.__del__ at 0x7f>
Traceback (most recent call last):
OSError: bad fd
/src/sfu/room/room.py:12: RuntimeWarning: coroutine 'Room.close' was never awaited
"""


def test_a_clean_log_has_no_problems() -> None:
    assert logcheck.find_log_problems(CLEAN) == []
    assert logcheck.check_log_text("sfu", CLEAN) is None


@pytest.mark.parametrize("text", [REQUEST_FAILED, ASYNCIO, UVICORN])
def test_each_kind_of_report_is_one_problem_with_its_whole_record(text: str) -> None:
    problems = logcheck.find_log_problems(CLEAN + text + CLEAN)
    assert len(problems) == 1
    assert problems[0].text == text.rstrip("\n")
    assert problems[0].line == len(CLEAN.splitlines()) + 1


def test_output_printed_without_a_logger_is_caught() -> None:
    problems = logcheck.find_log_problems(BARE)
    assert [p.line for p in problems] == [1, 4]
    assert "OSError: bad fd" in problems[0].text and "never awaited" in problems[1].text


def test_error_level_without_a_traceback_counts() -> None:
    text = "2026-12-01 12:00:00,000 ERROR sfu.signal.session: participant a: join failed: x\n"
    assert len(logcheck.find_log_problems(text)) == 1


def test_the_allow_list_is_per_pattern_and_must_be_used() -> None:
    problems = logcheck.find_log_problems(REQUEST_FAILED + ASYNCIO)
    left, unused = logcheck.unexpected(problems, [r"KeyError: 'x'", "never matches"])
    assert [p.text.splitlines()[0] for p in left] == [ASYNCIO.splitlines()[0]]
    assert unused == ["never matches"]
    message = logcheck.check("sfu", problems, [r"KeyError: 'x'", "never matches"])
    assert message is not None
    assert "Task exception was never retrieved" in message and "'never matches'" in message
    assert logcheck.check("sfu", problems, ["KeyError", "never retrieved"]) is None


def test_a_long_traceback_is_truncated_in_the_message() -> None:
    text = REQUEST_FAILED + "".join(f"  frame {i}\n" for i in range(500))
    message = logcheck.check_log_text("sfu", text)
    assert message is not None and "... (505 lines)" in message
    assert len(message.splitlines()) < logcheck.MAX_LINES_PER_PROBLEM + 10


def test_in_process_records_with_errors_or_tracebacks_are_collected() -> None:
    collector = logcheck.ProblemCollector()
    log = logging.getLogger("tests.selftest.logcheck")
    log.addHandler(collector)
    log.propagate = False
    try:
        log.warning("plain warning")
        log.error("an error %d", 1)
        try:
            raise ValueError("inner")
        except ValueError:
            log.warning("handled with a traceback", exc_info=True)
    finally:
        log.removeHandler(collector)
        log.propagate = True
    assert len(collector.problems) == 2
    assert "an error 1" in collector.problems[0].text
    assert "ValueError: inner" in collector.problems[1].text


@pytest.mark.expect_log_errors(r"deliberate: \d+")
def test_the_marker_declares_an_in_process_error() -> None:
    logging.getLogger("tests.selftest.logcheck").error("deliberate: %d", 7)


def test_the_test_clients_own_logs_are_not_the_code_under_test() -> None:
    collector = logcheck.ProblemCollector()
    for name in ("livekit", "livekit.rtc", "livekitx", "sfu.room"):
        collector.handle(logging.LogRecord(name, logging.ERROR, __file__, 1, "boom", None, None))
    assert [p.text.split(" ", 1)[0] for p in collector.problems] == ["livekitx", "sfu.room"]
