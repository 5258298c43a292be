"""Compiled parts, built from this tree's own C sources with the machine's compiler at install time.

Everything else is in pyproject.toml. Every extension is optional: without a compiler the
install goes on; `rtc.fast_path: auto` then falls back to the pure-Python forwarding path with
one warning (`sfu.media._fastpath`), the shared UDP socket stays with the event loop
(`sfu.media._fastrecv`, the compiled receive path), and the load tester counts in Python and
says so in its report (`loadtest._rx`).
"""

from setuptools import Extension, setup

#: the media extensions' flags: C11 with the GNU socket API (recvmmsg, sendmmsg), every warning
MEDIA_FLAGS = [
    "-O2",
    "-std=c11",
    "-D_GNU_SOURCE",
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-missing-field-initializers",
]

setup(
    ext_modules=[
        Extension(
            "sfu.media._fastpath",
            sources=["sfu/media/_fastpath.c"],
            extra_compile_args=MEDIA_FLAGS,
            depends=["sfu/media/_sockaddr.h", "sfu/media/_fastpath_api.h"],
            optional=True,
        ),
        Extension(
            "sfu.media._fastrecv",
            sources=["sfu/media/_fastrecv.c"],
            extra_compile_args=MEDIA_FLAGS,
            depends=["sfu/media/_sockaddr.h", "sfu/media/_fastpath_api.h"],
            optional=True,
        ),
        Extension("loadtest._rx", ["loadtest/_rx.c"], optional=True, extra_compile_args=["-O2"]),
    ]
)
