"""Builds the compiled forwarding path, `sfu.media._fastpath`, with the machine's C compiler.

Everything else is in pyproject.toml. The extension is optional: without a compiler the install
goes on, and `rtc.fast_path: auto` falls back to the pure-Python path with one warning.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "sfu.media._fastpath",
            sources=["sfu/media/_fastpath.c"],
            extra_compile_args=[
                "-O2",
                "-std=c11",
                "-D_GNU_SOURCE",
                "-Wall",
                "-Wextra",
                "-Wno-unused-parameter",
                "-Wno-missing-field-initializers",
            ],
            optional=True,
        )
    ]
)
