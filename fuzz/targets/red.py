"""RED payloads (`sfu.media.rtp.red`): `RedHeader.parse` and the per-copy `primary_offset`.

Both raise only `RedError`, agree on every input (also on a window of a larger buffer, as the
forwarder calls `primary_offset`), and what parses rebuilds to the bytes it was read from.
"""

from __future__ import annotations

from sfu.media.rtp.errors import RedError
from sfu.media.rtp.red import RedHeader, primary_offset

MAX_LEN = 256


def test_one(data: bytes) -> None:
    try:
        header: RedHeader | None = RedHeader.parse(data)
    except RedError:
        header = None
    framed = b"\x80" * 12 + data + b"\x00\x00\x02"
    try:
        offset: int | None = primary_offset(framed, 12, 12 + len(data))
    except RedError:
        offset = None
    if header is None:
        assert offset is None, "primary_offset accepts what RedHeader.parse refuses"
        return
    assert offset == 12 + header.primary_offset
    assert 0 < header.primary_offset < len(data)
    assert bytes(header) == data[: header.size]


def seeds() -> list[bytes]:
    return [
        bytes.fromhex("ef0f00036faabbcc11223344"),
        bytes.fromhex("6f112233"),
        bytes.fromhex("ef1e0002ef0f00016f0102030405"),
    ]
