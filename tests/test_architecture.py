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
