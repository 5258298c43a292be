"""Coverage-guided fuzzing (atheris + libFuzzer) of everything that parses or handles remote bytes.

`fuzz.targets` holds one module per target, each with `test_one(data)`; `fuzz.run` runs them under
atheris (`fuzz.worker`, one subprocess per target) and keeps the corpus in `fuzz/corpus/<target>/`,
which `tests/test_fuzz_corpus.py` replays without atheris.
"""
