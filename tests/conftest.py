"""Suite-wide settings.

Logged errors: a test fails when the code it ran in process logged an error it did not declare.
Errors logged by the SFU or auth service subprocesses are checked by their harnesses
(`tests/harness/sfu.py`, `tests/harness/logcheck.py`); this covers in-process code. A test that
provokes an error on purpose declares the pattern: `@pytest.mark.expect_log_errors(r"regex")`.

Hypothesis: every run explores new examples (the model-based properties included), so CI keeps
finding new cases instead of replaying one fixed set. A failure stays reproducible: it prints a
`@reproduce_failure` blob, and the example database (`.hypothesis/`) replays it first on every
later run in that checkout. `HYPOTHESIS_PROFILE=fixed` gives a derandomized run (the same examples
every time, no database), e.g. to bisect; `pytest --hypothesis-seed=N` repeats one random run.

`slow`: `make unit` runs everything else with nothing but the venv. A test that needs Synapse
(it requests the `synapse` fixture) or Chromium (its module imports the Chromium or browser
harness) is marked `slow` here, so no test file has to remember it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from types import ModuleType

import pytest
from hypothesis import settings

from tests.harness.logcheck import ProblemCollector, check

settings.register_profile("explore", derandomize=False, print_blob=True)
settings.register_profile("fixed", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "explore"))


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


NEEDS_CHROMIUM = {"tests.harness.chromium", "tests.harness.browser", "tests.harness.element_call"}


def _uses_chromium(module: ModuleType | None) -> bool:
    return module is not None and any(
        getattr(value, "__module__", None) in NEEDS_CHROMIUM for value in vars(module).values()
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "synapse" in fixtures or _uses_chromium(getattr(item, "module", None)):
            item.add_marker(pytest.mark.slow)


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
