"""What `pip install matrix-sfu` brings: the runtime requirements of pyproject.toml, resolved.

The declared requirements are read from pyproject.toml and followed transitively through the
metadata of the installed distributions (``importlib.metadata``), markers and requested extras
evaluated as pip would. The load tester's media and plotting libraries and mautrix must not be
in that closure; PyAV may, but only because aiortc requires it (docs/decisions.md); and every
direct requirement must be imported by ``sfu/`` or ``auth_service/``.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from collections import defaultdict, deque
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from loadtest.__main__ import EXTRA_MODULES

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
NEVER_AT_RUNTIME = {"numpy", "matplotlib", "mautrix"}
# Runtime requirements no module imports by name, and who uses them.
USED_WITHOUT_IMPORT = {"httptools": "uvicorn's HTTP/1.1 parser, chosen by its http='auto'"}


def requirements(names: list[str]) -> list[Requirement]:
    return [Requirement(name) for name in names]


def applies(requirement: Requirement, extras: set[str]) -> bool:
    """Whether pip installs ``requirement`` of a distribution asked for with ``extras``."""
    marker = requirement.marker
    return marker is None or any(marker.evaluate({"extra": e}) for e in extras | {""})


def resolve(roots: list[Requirement]) -> dict[str, set[str]]:
    """Every distribution ``roots`` pull in, each mapped to the distributions that require it
    (``"matrix-sfu"`` for the roots themselves)."""
    required_by: dict[str, set[str]] = defaultdict(set)
    queue = deque(("matrix-sfu", r) for r in roots if applies(r, set()))
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        parent, requirement = queue.popleft()
        name = canonicalize_name(requirement.name)
        required_by[name].add(parent)
        key = (name, frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            metadata = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise AssertionError(f"{name} (required by {parent}) is not installed") from exc
        for line in metadata.requires or []:
            child = Requirement(line)
            if applies(child, set(requirement.extras)):
                queue.append((name, child))
    return required_by


def import_names(distribution: str) -> set[str]:
    """The top-level modules ``distribution`` installs."""
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError as exc:
        raise AssertionError(f"{distribution} is not installed: run `make venv`") from exc
    wanted = canonicalize_name(distribution)
    return {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if wanted in {canonicalize_name(owner) for owner in owners}
    }


def third_party_imports(*packages: str) -> set[str]:
    names: set[str] = set()
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"sfu", "auth_service", "loadtest"}


def test_a_plain_install_pulls_no_load_tester_or_focus_packages() -> None:
    closure = resolve(requirements(PROJECT["dependencies"]))
    assert sorted(NEVER_AT_RUNTIME & closure.keys()) == []


def test_pyav_arrives_only_through_aiortc() -> None:
    closure = resolve(requirements(PROJECT["dependencies"]))
    assert closure["av"] == {"aiortc"}


def test_every_runtime_requirement_is_imported_by_a_service() -> None:
    imported = third_party_imports("sfu", "auth_service")
    unused = [
        r.name
        for r in requirements(PROJECT["dependencies"])
        if not import_names(r.name) & imported and r.name not in USED_WITHOUT_IMPORT
    ]
    assert unused == []


def test_every_import_of_the_services_is_a_runtime_requirement() -> None:
    declared = set().union(*(import_names(r.name) for r in requirements(PROJECT["dependencies"])))
    assert sorted(third_party_imports("sfu", "auth_service") - declared) == []


def test_the_load_tester_names_the_modules_its_extra_installs() -> None:
    extra = requirements(PROJECT["optional-dependencies"]["loadtest"])
    assert sorted(r.name for r in extra if not import_names(r.name) & set(EXTRA_MODULES)) == []
    assert set(EXTRA_MODULES) <= set().union(*(import_names(r.name) for r in extra))
