"""Benchmark: what importing each service costs at start-up, and what PyAV adds to the SFU's share.

aiortc declares a dependency on PyAV (``av``) and imports it at module level, in its package
``__init__`` (through its codecs) and in ``aiortc.rtp``, which ``aiortc.rtcdtlstransport`` needs:
every SFU process loads PyAV and its FFmpeg libraries although it never decodes media. This
measures how much that is, so the question "is it worth avoiding?" has a number.

Each variant runs ``--runs`` times, interleaved with the others, each time in a fresh interpreter
(``python -c``) that reports the wall time of the import and its RSS (``VmRSS`` of
/proc/self/status) after it:

* ``python``       — the interpreter alone, nothing imported: the baseline;
* ``av``           — ``import av`` alone;
* ``sfu.app``      — ``import sfu.app`` as it runs in production (PyAV included);
* ``sfu.app-av``   — the same with every ``av`` module replaced by an empty stand-in before the
  import: what the SFU would cost if aiortc did not load PyAV (measurement only; the SFU never
  runs like this);
* ``auth_service.app`` — the auth service, which imports no aiortc.

Prints the median and the spread per variant and one JSON line; asserts nothing.

Run: ``PYTHONPATH=$PWD .venv/bin/python benchmarks/import_cost.py [--runs 9]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

MEASURE = """
import time
t0 = time.perf_counter()
{body}
elapsed = time.perf_counter() - t0
rss = next(int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS:'))
import sys
print(elapsed, rss, int(getattr(sys.modules.get('av'), '__file__', None) is not None))
"""

# An import hook that answers every `av` / `av.*` import with an empty module whose attributes
# are placeholder classes: enough for aiortc's module-level `from av import AudioFrame`.
STUB_AV = """
import importlib.abc, importlib.machinery, sys, types

class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith('__'):
            raise AttributeError(name)
        value = type(name, (), {})
        setattr(self, name, value)
        return value

class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == 'av' or fullname.startswith('av.'):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None
    def create_module(self, spec):
        module = _Stub(spec.name)
        module.__path__ = []
        return module
    def exec_module(self, module):
        pass

sys.meta_path.insert(0, _Finder())
"""

VARIANTS = {
    "python": ("", "pass"),
    "av": ("", "import av"),
    "sfu.app": ("", "import sfu.app"),
    "sfu.app-av": (STUB_AV, "import sfu.app"),
    "auth_service.app": ("", "import auth_service.app"),
}


def run_once(prelude: str, body: str) -> tuple[float, int, bool]:
    code = prelude + MEASURE.format(body=body)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    return float(out[0]), int(out[1]), out[2] == "1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    # Interleaved, so that a burst of other work on the machine hits every variant alike.
    runs: dict[str, list[tuple[float, int, bool]]] = {name: [] for name in VARIANTS}
    for _ in range(args.runs):
        for name, (prelude, body) in VARIANTS.items():
            runs[name].append(run_once(prelude, body))
    results: dict[str, dict[str, float | bool]] = {}
    for name, samples in runs.items():
        times_ms = [s[0] * 1000 for s in samples]
        rss_mib = [s[1] / 1024 for s in samples]
        results[name] = {
            "import_ms": round(statistics.median(times_ms), 1),
            "import_ms_min": round(min(times_ms), 1),
            "import_ms_max": round(max(times_ms), 1),
            "rss_mib": round(statistics.median(rss_mib), 1),
            "av_loaded": samples[0][2],
        }
        r = results[name]
        print(
            f"{name:18} import {r['import_ms']:7.1f} ms (min {r['import_ms_min']:.1f}, "
            f"max {r['import_ms_max']:.1f})  RSS {r['rss_mib']:6.1f} MiB  PyAV loaded: {r['av_loaded']}"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
