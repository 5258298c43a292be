"""rtc.turn_servers: parsing (hostile values bounded, precise errors) and the ICE servers a
participant gets, with TURN REST credentials in coturn's use-auth-secret scheme."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

import pytest

from sfu.config import ConfigError, RtcConfig, TurnServer, from_mapping, parse_turn_servers
from sfu.turn import ice_servers_for, rest_credential, turn_url

KEYS = {"k": "s" * 40}
SECRET = "north-wind-secret-0123"


def rtc_of(turn_servers: Any, **rtc: Any) -> RtcConfig:
    return from_mapping({"keys": KEYS, "rtc": {"turn_servers": turn_servers, **rtc}}).rtc


def test_rest_credential_matches_an_independent_hmac() -> None:
    # expected value from `printf 1700086400:alice | openssl dgst -sha1 -hmac SECRET -binary | base64`
    username, credential = rest_credential(SECRET, "alice", 86400, now=1_700_000_000.7)
    assert username == "1700086400:alice"
    assert credential == "gRNV1LkgIwPIXtoV3c4Clv1Ge2c="


def test_rest_credential_hashes_identities_a_stun_username_cannot_carry() -> None:
    for identity in ("", "x" * 200, "@ålice:example.org:DEV", "a b", "a\x00b"):
        username, credential = rest_credential(SECRET, identity, 60, now=100)
        expiry, name = username.split(":", 1)
        assert expiry == "160"
        assert name == hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()
        expected = hmac.new(SECRET.encode(), username.encode(), hashlib.sha1).digest()
        assert base64.b64decode(credential) == expected
    # Matrix legacy identities (user:device) are printable ASCII and stay readable
    username, _ = rest_credential(SECRET, "@alice:example.org:DEVICE", 60, now=100)
    assert username == "160:@alice:example.org:DEVICE"


def test_urls_follow_livekit() -> None:
    assert turn_url(TurnServer("turn.example.org", 3478, "udp", "u", "c")) == (
        "turn:turn.example.org:3478?transport=udp"
    )
    assert turn_url(TurnServer("turn.example.org", 3478, "tcp", "u", "c")) == (
        "turn:turn.example.org:3478?transport=tcp"
    )
    assert turn_url(TurnServer("turn.example.org", 443, "tls", "u", "c")) == (
        "turns:turn.example.org:443?transport=tcp"
    )


def test_ice_servers_for_a_participant() -> None:
    rtc = rtc_of(
        [
            {"host": "turn.example.org", "port": 3478, "protocol": "udp", "secret": SECRET},
            {
                "host": "turn.example.org",
                "port": 443,
                "protocol": "tls",
                "secret": SECRET,
                "ttl": 3600,
            },
            {
                "host": "203.0.113.7",
                "port": 3478,
                "protocol": "tcp",
                "username": "u",
                "credential": "p",
            },
        ],
        ice_servers=["stun:stun.example.org:3478"],
    )
    servers = ice_servers_for(rtc, "alice", now=1000)
    assert [list(s.urls) for s in servers] == [
        ["turn:turn.example.org:3478?transport=udp"],
        ["turns:turn.example.org:443?transport=tcp"],
        ["turn:203.0.113.7:3478?transport=tcp"],
        ["stun:stun.example.org:3478"],
    ]
    assert servers[0].username == "87400:alice"
    assert servers[1].username == "4600:alice"
    assert servers[0].credential == rest_credential(SECRET, "alice", 86400, 1000)[1]
    assert (servers[2].username, servers[2].credential) == ("u", "p")
    assert (servers[3].username, servers[3].credential) == ("", "")
    # another participant, another credential
    assert ice_servers_for(rtc, "bob", now=1000)[0].username == "87400:bob"


def test_protocol_defaults_to_udp_and_is_case_insensitive() -> None:
    (server,) = rtc_of([{"host": "t.example", "port": 3478, "secret": SECRET}]).turn_servers
    assert server.protocol == "udp" and server.ttl == 86400
    (server,) = rtc_of(
        [{"host": "t.example", "port": "5349", "protocol": "TLS", "secret": SECRET}]
    ).turn_servers
    assert (server.protocol, server.port) == ("tls", 5349)


def test_secret_is_not_in_repr() -> None:
    (server,) = rtc_of([{"host": "t.example", "port": 3478, "secret": SECRET}]).turn_servers
    assert SECRET not in repr(server)


@pytest.mark.parametrize(
    ("entry", "error"),
    [
        ("turn:t.example:3478", r"rtc.turn_servers\[0\]: expected a mapping"),
        ({"port": 3478, "secret": SECRET}, r"\[0\]\.host: missing"),
        (
            {"host": "turn:t.example", "port": 3478, "secret": SECRET},
            r"host: 'turn:t.example' is not a hostname",
        ),
        ({"host": "t.example:3478", "port": 3478, "secret": SECRET}, r"no scheme, port or path"),
        ({"host": "t.example/x", "port": 3478, "secret": SECRET}, r"is not a hostname"),
        ({"host": "t .example", "port": 3478, "secret": SECRET}, r"is not a hostname"),
        ({"host": "a" * 64 + ".example", "port": 3478, "secret": SECRET}, r"is not a hostname"),
        ({"host": "::1", "port": 3478, "secret": SECRET}, r"is not a hostname"),
        ({"host": "t.example\n", "port": 3478, "secret": SECRET}, r"host: contains a control"),
        ({"host": "h" * 600, "port": 3478, "secret": SECRET}, r"host: longer than 512 bytes"),
        ({"host": ["t"], "port": 3478, "secret": SECRET}, r"host: expected a string"),
        ({"host": "t.example", "secret": SECRET}, r"port: 0 is not a port"),
        ({"host": "t.example", "port": 70000, "secret": SECRET}, r"port: 70000 is not a port"),
        ({"host": "t.example", "port": True, "secret": SECRET}, r"port: expected an integer"),
        (
            {"host": "t.example", "port": "x" * 1000, "secret": SECRET},
            r"port: 'x{40}' is not an integer$",
        ),
        (
            {"host": "t.example", "port": 3478, "protocol": "dtls", "secret": SECRET},
            r"protocol: must be one of udp, tcp, tls",
        ),
        ({"host": "t.example", "port": 3478}, r"needs username and credential, or secret"),
        ({"host": "t.example", "port": 3478, "username": "u"}, r"needs username and credential"),
        (
            {
                "host": "t.example",
                "port": 3478,
                "username": "u",
                "credential": "c",
                "secret": SECRET,
            },
            r"either secret .* not both",
        ),
        (
            {"host": "t.example", "port": 3478, "secret": "short"},
            r"secret: a placeholder or shorter than 16",
        ),
        ({"host": "t.example", "port": 3478, "secret": "changeme"}, r"secret: a placeholder"),
        (
            {"host": "t.example", "port": 3478, "secret": SECRET, "ttl": 10},
            r"ttl: must be 60 to 604800 seconds",
        ),
        (
            {"host": "t.example", "port": 3478, "secret": SECRET, "ttl": 10**30},
            r"ttl: must be 60 to",
        ),
        (
            {"host": "t.example", "port": 3478, "credential": "c" * 513, "username": "u"},
            r"credential: longer than 512",
        ),
        (
            {"host": "t.example", "port": 3478, "secret": SECRET, "urls": ["x"]},
            r"unknown key 'urls' \(known: host, port",
        ),
        (
            {"host": "t.example", "port": 3478, "secret": SECRET, "k" * 1000: 1},
            r"unknown key 'k{40}'",
        ),
    ],
)
def test_hostile_entries_get_precise_errors(entry: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_turn_servers([entry])


def test_the_list_itself_is_bounded() -> None:
    with pytest.raises(ConfigError, match=r"rtc.turn_servers: expected a list, got dict"):
        rtc_of({"host": "t.example"})
    entry = {"host": "t.example", "port": 3478, "secret": SECRET}
    assert len(rtc_of([entry] * 16).turn_servers) == 16
    with pytest.raises(ConfigError, match=r"17 entries, at most 16"):
        rtc_of([entry] * 17)
    assert rtc_of(None).turn_servers == ()


def test_accepted_hosts() -> None:
    for host in ("turn.example.org", "turn.example.org.", "203.0.113.7", "[2001:db8::1]", "t"):
        (server,) = parse_turn_servers([{"host": host, "port": 3478, "secret": SECRET}])
        assert server.host == host
