"""The README's Layout stays true: every path it names exists, and every module of a folder it describes is named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def layout_entries() -> dict[str, str]:
    """path → its description (continuation lines joined), from the code block under '## Layout'."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    path = ""
    for line in block.splitlines():
        if not line.strip():
            continue
        if not line.startswith(" "):
            path, _, desc = line.partition(" ")
            path = path.rstrip(",")
            entries[path] = desc
        else:
            entries[path] += " " + line.strip()
    return entries


def test_every_path_in_the_layout_exists() -> None:
    for path in layout_entries():
        if "…" in path or "*" in path:
            continue
        assert (ROOT / path).exists(), f"README Layout names {path}, which does not exist"


def test_every_module_of_a_described_folder_is_named() -> None:
    missing = []
    for path, desc in layout_entries().items():
        folder = ROOT / path
        if not path.endswith("/") or not folder.is_dir():
            continue
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", desc))
        for module in sorted(folder.glob("*.py")):
            if module.stem != "__init__" and not module.stem.endswith(("_pb2", "_pb2_grpc")) \
                    and module.stem not in words:
                missing.append(f"{path}{module.name}")
    assert not missing, f"modules the README's Layout does not name: {missing}"
