"""Compiled parts, built from this tree's own C sources at install time (`pip install -e .`).

The metadata lives in pyproject.toml. `loadtest._rx` is optional: without a compiler the load
tester counts in Python (loadtest/rx.py) and says so in its report.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("loadtest._rx", ["loadtest/_rx.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
