"""deploy/: the compose file and the Kubernetes manifests validate offline against their published
schemas (check-jsonschema's vendored compose-spec, kubernetes-validate's bundled Kubernetes
OpenAPI schemas, both from PyPI), a broken copy of each fails (so the tools really check), and the
files agree with each other and with the SFU's config loader: one UDP port, the drain limit below
the grace periods, probes on /healthz and /readyz, the Synapse settings Element Call needs."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sfu.config import from_mapping

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
KEYS = {"APIdeploytest": "k" * 40}


def tool(name: str) -> str:
    for candidate in (Path(sys.executable).parent / name, shutil.which(name)):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    raise AssertionError(f"{name} is missing: run `make venv` (it is in the test extras)")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def compose_valid(path: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path))


def k8s_valid(*paths: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("kubernetes-validate"), "--strict", "--quiet", *map(str, paths))


def k8s_resources() -> list[Path]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [K8S / name for name in kustomization["resources"]]


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in k8s_resources():
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    result = compose_valid(DEPLOY / "docker-compose.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    broken["services"]["sfu"]["ports"] = {"udp": 7882}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert compose_valid(tmp_path / "broken.yml").returncode != 0


def test_kubernetes_manifests_match_their_schemas(tmp_path: Path) -> None:
    resources = k8s_resources()
    assert sorted(p.name for p in resources) == sorted(
        p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"
    )
    result = k8s_valid(*resources)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = yaml.safe_load((K8S / "sfu.yaml").read_text())
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 320  # a typo
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    assert k8s_valid(tmp_path / "broken.yaml").returncode != 0


def test_kubernetes_sfu_drains_within_its_grace_period() -> None:
    docs = documents()
    config_map = docs[("ConfigMap", "matrix-sfu")]
    config = from_mapping({**yaml.safe_load(config_map["data"]["sfu.yaml"]), "keys": KEYS})
    pod = docs[("Deployment", "sfu")]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert (
        config.drain_timeout + 10
        <= pod["terminationGracePeriodSeconds"]
        <= (config.drain_timeout + 60)
    )
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    media = next(p for p in container["ports"] if p["name"] == "media")
    assert (media["containerPort"], media["protocol"]) == (config.rtc.udp_port, "UDP")
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    # several replicas on one Redis, one per Kubernetes node (hostNetwork ports), one drained at
    # a time
    deployment = docs[("Deployment", "sfu")]["spec"]
    assert deployment["replicas"] >= 2
    assert config.redis.address.split(":")[0] in {n for (kind, n) in docs if kind == "Service"}
    anti = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert deployment["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert docs[("PodDisruptionBudget", "sfu")]["spec"]["maxUnavailable"] == 1
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["NODE_ADDRESS"] == f"$(NODE_IP):{config.port}"
    auth = docs[("Deployment", "auth")]["spec"]["template"]["spec"]["containers"][0]
    assert auth["readinessProbe"]["httpGet"]["path"] == "/healthz"


def test_compose_sfu_config_and_grace_period_agree() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    example = (DEPLOY / "sfu.example.yaml").read_text().replace("<TURN_SECRET>", "t" * 32)
    example = re.sub(r"secret: <[^>]*>", "secret: " + "t" * 32, example)
    example = re.sub(r"api_key: <[^>]*>", "api_key: " + next(iter(KEYS)), example)
    config = from_mapping({**yaml.safe_load(example), "keys": KEYS})
    sfu = compose["services"]["sfu"]
    grace = int(sfu["stop_grace_period"].rstrip("s"))
    assert config.drain_timeout + 10 <= grace <= config.drain_timeout + 60
    assert f"{config.rtc.udp_port}:{config.rtc.udp_port}/udp" in sfu["ports"]
    assert [s.protocol for s in config.rtc.turn_servers] == ["udp", "tcp", "tls"]
    # the auth service hears of leaves (delegated delayed leave) and keeps its jobs in Redis
    assert config.webhook.urls == ("http://auth:8080/sfu_webhook",)
    assert compose["services"]["auth"]["environment"]["LIVEKIT_REDIS_URL"].startswith("redis://")
    coturn = (DEPLOY / "coturn" / "turnserver.conf").read_text().splitlines()
    assert "use-auth-secret" in coturn  # the scheme sfu.turn derives credentials for
    assert any(
        a.startswith("--static-auth-secret=") for a in compose["services"]["coturn"]["command"]
    )


def test_compose_sets_what_the_caddyfile_reads() -> None:
    """The Caddyfile is configured by the environment only (tests/integration/test_tls_proxy.py
    runs the same file); compose sets every variable it reads that has no default, and the
    upstreams name the compose services."""
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    read = dict(re.findall(r"\{\$([A-Z_]+)(?::([^}]*))?\}", caddyfile))
    caddy = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["caddy"]
    environment = caddy["environment"]
    assert {name for name, default in read.items() if not default} <= set(environment), read
    assert environment["AUTH_UPSTREAM"] == "auth:8080" == read["AUTH_UPSTREAM"]
    assert environment["SFU_UPSTREAM"] == "sfu:7880" == read["SFU_UPSTREAM"]
    assert set(environment) <= set(read), environment


def test_homeserver_settings_are_what_element_call_needs() -> None:
    settings = yaml.safe_load((DEPLOY / "matrix" / "homeserver.rtc.yaml").read_text())
    assert settings["experimental_features"]["msc4143_enabled"] is True
    (transport,) = settings["matrix_rtc"]["transports"]
    assert transport["type"] == "livekit"
    assert transport["livekit_service_url"].endswith("/livekit/jwt")
    assert settings["default_room_version"] == "11"
    foci = settings["extra_well_known_client_content"]["org.matrix.msc4143.rtc_foci"]
    assert foci == [transport]


@pytest.mark.parametrize("name", ["Dockerfile"])
def test_image_runs_as_non_root_with_a_healthcheck(name: str) -> None:
    text = (DEPLOY / name).read_text()
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n.*/healthz", text, re.M)
