"""`python -m loadtest` / `matrix-sfu-loadtest`: parse the flags, run, write the report."""

from __future__ import annotations

import logging
import sys

from loadtest.config import parse_args
from loadtest.runner import run


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    scenario = parse_args(argv)
    report = run(scenario)
    return 0 if report.finals or not scenario.subscribers else 1


if __name__ == "__main__":
    sys.exit(main())
