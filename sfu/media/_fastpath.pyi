# Stub of the compiled per-copy forwarding path (sfu/media/_fastpath.c); the pure-Python
# reference with the same interface is sfu/media/fastpath_py.py.
from collections.abc import Sequence

HISTORY_SIZE: int
SLOT_SIZE: int
TWCC_HISTORY: int

class TransportWideSequence:
    ext_id: int
    next_seq: int
    def __init__(self, ext_id: int = 0) -> None: ...
    def record(self, size: int, now: float, /) -> int: ...
    def sent(self, seq: int, /) -> tuple[float, int] | None: ...

class Batch:
    sent: int
    dropped: int
    syscalls: int
    flushes: int
    gso_datagrams: int
    auto_flushes: int
    fanout_flushes: int
    fanout_datagrams: int
    capacity: int
    def __init__(self, fd: int, *, gso: bool = False, capacity: int = 1024) -> None: ...
    @property
    def gso(self) -> bool: ...
    @property
    def fd(self) -> int: ...
    def __len__(self) -> int: ...
    def flush(self) -> int: ...
    def pending(self) -> list[tuple[bytes, tuple[str, int]]]: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...

class Target:
    ssrc: int
    payload_type: int
    ts_offset: int
    seq_offset: int
    switch_seq: int
    epoch: int
    pid_offset: int
    tl0_offset: int
    keyidx_offset: int
    sent_any: bool
    last_out_seq: int
    last_out_ts: int
    last_out_time: float
    last_packet: object | None
    addr: tuple[str, int]
    packets_sent: int
    octets_sent: int
    send_dropped: int
    twcc: TransportWideSequence | None
    closed: bool
    def __init__(
        self, batch: Batch, addr: tuple[str, int], *, srtp: int = 0, owner: object = None
    ) -> None: ...
    @property
    def batch(self) -> Batch: ...
    def entry(self, slot: int, /) -> tuple[int, int, bytes, int] | None: ...
    def clear_history(self) -> None: ...
    def send(self, data: bytes, *, rtcp: bool = False) -> bool: ...
    def resend(self, slot: int, now: float = 0.0, /) -> bool: ...

def forward(
    targets: Sequence[Target],
    packet: object,
    data: bytes,
    ext_seq: int,
    payload_offset: int,
    padding_size: int,
    now: float,
    /,
) -> tuple[int, int]: ...
def set_srtp(protect: int, protect_rtcp: int, /) -> None: ...
