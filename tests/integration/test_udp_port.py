"""`rtc.udp_port`: every peer connection on one UDP port, with real clients.

The LiveKit Python SDK (libwebrtc's ICE) and livekit-client in Chromium join an SFU configured
with a single UDP port; media flows both ways, and the SFU process holds no UDP socket on any
other port.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aioice import stun

from tests.harness.lkclient import CollectingSubscriber, SyntheticPublisher
from tests.harness.sfu import SfuInstance, free_tcp_port, free_udp_port, running_sfu
from tests.integration.test_browser_call import _two_party_call
from tests.integration.test_sfu_robustness import ROOM, assert_media_flowing


def _binding_request(username: str) -> bytes:
    message = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    message.attributes["USERNAME"] = username
    message.add_message_integrity(b"not-the-password")
    message.add_fingerprint()
    return bytes(message)


def udp_ports_of(pid: int) -> set[int]:
    """Local ports of the UDP sockets process `pid` holds (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                cols = row.split()
                if cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.fixture
async def sfu_one_port(
    tmp_path: Path, sfu_keys: tuple[str, str]
) -> AsyncIterator[tuple[SfuInstance, int]]:
    key, secret = sfu_keys
    port = free_udp_port()
    async with running_sfu(
        tmp_path / "sfu",
        api_key=key,
        api_secret=secret,
        extra_config={"rtc": {"udp_port": port, "workers": 1}},
    ) as sfu:
        yield sfu, port


async def test_python_sdk_media_over_one_udp_port(sfu_one_port: tuple[SfuInstance, int]) -> None:
    sfu, port = sfu_one_port
    assert udp_ports_of(sfu.pid) == {port}  # bound at start-up
    publisher = SyntheticPublisher("alice")
    subscribers = [CollectingSubscriber("bob"), CollectingSubscriber("carol")]
    await publisher.connect(sfu.url, sfu.token("alice", ROOM))
    for subscriber in subscribers:
        await subscriber.connect(sfu.url, sfu.token(subscriber.identity, ROOM))
    try:
        await publisher.publish()
        for subscriber in subscribers:
            await assert_media_flowing(subscriber, "alice")
        # five peer connections (publisher + subscriber PCs) and still one port
        assert udp_ports_of(sfu.pid) == {port}
        # garbage, unknown STUN users and fake SRTP at the shared port: dropped, media unaffected
        junk = [os.urandom(n % 300) for n in range(600)]
        junk += [_binding_request(f"nobody{n}:x") for n in range(200)]
        junk += [b"\x80\x60" + os.urandom(200) for _ in range(200)]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker:
            for datagram in junk:
                attacker.sendto(datagram, ("127.0.0.1", port))
        for subscriber in subscribers:
            await assert_media_flowing(subscriber, "alice")
        sfu.assert_alive()
        await subscribers[0].leave()
        await assert_media_flowing(subscribers[1], "alice")
    finally:
        await subscribers[1].leave()
        await publisher.leave()
    sfu.assert_alive()


async def test_two_browsers_call_over_one_udp_port(sfu_one_port: tuple[SfuInstance, int]) -> None:
    sfu, port = sfu_one_port
    await _two_party_call(sfu, e2ee_key=None)
    assert udp_ports_of(sfu.pid) == {port}


def test_a_taken_udp_port_is_a_one_line_startup_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        taken = holder.getsockname()[1]
        config = tmp_path / "sfu.yaml"
        config.write_text(
            f'port: {free_tcp_port()}\nbind_addresses: ["127.0.0.1"]\nkeys: {{APIudp: {"s" * 40}}}\n'
            f"rtc: {{udp_port: {taken}}}\n"
        )
        result = subprocess.run(
            [sys.executable, "-m", "sfu", "--config", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        f"matrix-sfu: cannot bind rtc.udp_port {taken} on 127.0.0.1: Address already in use"
    )
