"""`python -m loadtest` / `matrix-sfu-loadtest`: parse the flags, run, write the report."""

from __future__ import annotations

import importlib.util
import logging
import sys

from loadtest.config import parse_args

# What the `loadtest` extra installs (pyproject.toml): a plain `pip install matrix-sfu` has the
# SFU and the auth service only.
EXTRA_MODULES = ("av", "numpy", "matplotlib", "httpx", "websockets")


def missing_extra() -> list[str]:
    """The load tester's modules this environment lacks."""
    return [name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    scenario = parse_args(argv)
    missing = missing_extra()
    if missing:
        print(
            f"matrix-sfu-loadtest: missing {', '.join(missing)}; "
            "install the load tester with: pip install 'matrix-sfu[loadtest]'",
            file=sys.stderr,
        )
        return 2
    from loadtest.runner import run  # imports httpx and websockets

    report = run(scenario)
    return 0 if report.finals or not scenario.subscribers else 1


if __name__ == "__main__":
    sys.exit(main())
