"""The worker process's start-up: its `rtc.udp_port` socket is read by the compiled receive
path, as the single process's is (a worker once bound it without, and every armed stream and
compiled unprotect silently fell back to Python)."""

from __future__ import annotations

from sfu.media import fastpath
from sfu.media.transport import TransportConfig
from sfu.media.transport.udpmux import close_muxes, open_mux
from sfu.media.worker.__main__ import open_udp_port, transport_config
from tests.harness.sfu import free_udp_port


async def test_the_workers_udp_port_is_read_by_the_compiled_receive_path() -> None:
    impl = fastpath.COMPILED
    assert impl is not None and impl.receives, "the compiled receive path is not built"
    port = free_udp_port()
    config = transport_config(
        {"bind_addresses": ["127.0.0.1"], "udp_port": port, "fast_path": "auto"}
    )
    assert config.fast_path is impl
    await open_udp_port(config)
    try:
        mux = await open_mux("127.0.0.1", port, impl)  # the one open_udp_port bound
        assert mux.reader is not None
    finally:
        close_muxes()


async def test_fast_path_off_leaves_the_socket_to_the_event_loop() -> None:
    port = free_udp_port()
    config = TransportConfig(bind_addresses=("127.0.0.1",), udp_port=port)
    await open_udp_port(config)
    try:
        assert (await open_mux("127.0.0.1", port, None)).reader is None
    finally:
        close_muxes()


async def test_no_udp_port_binds_nothing() -> None:
    await open_udp_port(TransportConfig(bind_addresses=("127.0.0.1",)))
    close_muxes()
