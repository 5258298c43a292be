"""Suite-wide: a test fails when the code it ran in process logged an error it did not declare.

Errors logged by the SFU or auth service subprocesses are checked by their harnesses
(`tests/harness/sfu.py`, `tests/harness/logcheck.py`); this covers in-process code. A test that
provokes an error on purpose declares the pattern: `@pytest.mark.expect_log_errors(r"regex")`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.harness.logcheck import ProblemCollector, check


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "expect_log_errors(*regex): errors this test logs on purpose (each must appear)",
    )
    config.addinivalue_line(
        "markers",
        "expect_sfu_log_errors(*regex): errors the test makes the `sfu` fixture's SFU log on "
        "purpose (each must appear)",
    )


@pytest.fixture(autouse=True)
def _fail_on_logged_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    collector = ProblemCollector()
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield
    finally:
        root.removeHandler(collector)
    expected = [p for marker in request.node.iter_markers("expect_log_errors") for p in marker.args]
    failure = check(f"{request.node.nodeid} (in process)", collector.problems, expected)
    if failure is not None:
        pytest.fail(failure, pytrace=False)
