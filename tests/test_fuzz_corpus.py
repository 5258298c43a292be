"""Replays the fuzz corpus: every file of `fuzz/corpus/<target>/` and the target's seeds.

The corpus is what `python -m fuzz.run` (`make fuzz`) kept as covering new code; replaying it here,
without atheris, keeps those inputs passing: each target's `test_one` lets only the documented
error types of the code it drives through. The campaign's findings, all fixed, are replayed
too (`fuzz/crashes/`, see `fuzz/README.md`), so none comes back.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `fuzz` is a top-level folder, not an installed package
    sys.path.append(str(ROOT))

from fuzz.targets import TARGETS, load  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
FINDINGS = ROOT / "fuzz" / "crashes"


def test_every_target_has_a_corpus() -> None:
    for target in TARGETS:
        files = list((CORPUS / target).glob("*"))
        assert files, f"fuzz/corpus/{target}/ is empty: run `python -m fuzz.run {target}`"


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_and_corpus_pass(target: str) -> None:
    module = load(target)
    for data in module.seeds():
        assert len(data) <= module.MAX_LEN, f"{target}: a seed longer than MAX_LEN"
        module.test_one(data)
    for path in sorted((CORPUS / target).glob("*")):
        try:
            module.test_one(path.read_bytes())
        except Exception as exc:
            raise AssertionError(f"fuzz/corpus/{target}/{path.name} fails") from exc


@pytest.mark.parametrize("path", sorted(FINDINGS.glob("*.bin")), ids=lambda p: p.name)
def test_every_finding_stays_fixed(path: Path) -> None:
    target = path.name.split("-", 1)[0]
    load(target).test_one(path.read_bytes())
