"""House rules no linter expresses: the SFU never decodes media, and nothing reads ../shared."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DECODING_MODULES = (
    "av",
    "aiortc.codecs",
    "aiortc.contrib",
    "aiortc.mediastreams",
    "aiortc.rtcrtpreceiver",
    "aiortc.rtcrtpsender",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_sfu_never_imports_codec_or_media_modules() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "sfu").rglob("*.py"))
        for name in imported_modules(path)
        if any(name == m or name.startswith(m + ".") for m in DECODING_MODULES)
    ]
    assert offenders == []


def test_nothing_reads_the_shared_folder() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("sfu", "auth_service", "loadtest", "scripts", "tests")
        if (ROOT / package).exists()
        for path in (ROOT / package).rglob("*.py")
        if "../shared" in path.read_text(encoding="utf-8") and path.name != "test_architecture.py"
    ]
    assert offenders == []


# -- the import graph -----------------------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sfu_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / "sfu").rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Each sfu module → the sfu modules it imports: every import statement counts, those under
    `if TYPE_CHECKING:` and inside functions too (a cycle hidden there is still a cycle)."""
    modules = sfu_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                # `from package import module` imports the module; otherwise the names' module
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in modules:  # `import sfu.a.b` → the module sfu.a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
    on_path, done = set[str](), set[str]()
    for start in sorted(graph):
        if start in done:
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        on_path.add(start)
        while stack:
            child = next(stack[-1], None)
            if child is None:
                stack.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                path.append(child)
                on_path.add(child)
                stack.append(iter(sorted(graph.get(child, set()))))
    return None


def test_the_cycle_finder_finds_a_cycle_through_three_modules() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_counts_type_checking_and_function_local_imports() -> None:
    graph = import_graph()
    assert "sfu.room.participant" in graph["sfu.room.room"]
    assert "sfu.room.types" in graph["sfu.room.participant"]
    assert "sfu.media.transport.peer" in graph["sfu.media.transport"]  # package re-exports


def test_no_import_cycle_inside_sfu() -> None:
    assert find_cycle(import_graph()) is None


def test_the_participant_never_imports_its_room() -> None:
    graph = import_graph()
    reachable, frontier = set(), ["sfu.room.participant"]
    while frontier:
        for child in graph[frontier.pop()] - reachable:
            reachable.add(child)
            frontier.append(child)
    assert "sfu.room.room" not in reachable and "sfu.room.manager" not in reachable


# -- file sizes (house rules) ---------------------------------------------------------------------
def line_count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def test_no_file_of_the_room_layer_is_over_400_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): line_count(p) for p in (ROOT / "sfu" / "room").glob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 400} == {}


def test_no_sfu_file_is_over_800_lines() -> None:
    sizes = {str(p.relative_to(ROOT)): line_count(p) for p in (ROOT / "sfu").rglob("*.py")}
    assert {path: n for path, n in sizes.items() if n > 800} == {}
