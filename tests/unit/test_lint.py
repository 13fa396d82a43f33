"""The tree passes its linters: ruff and mypy (strict, pyproject) over every Python folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_passes_on_every_python_folder() -> None:
    out = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]


def test_mypy_passes_on_every_python_folder() -> None:
    # pyproject's [tool.mypy] files: the services' packages, tests/, bench/ and scripts/.
    out = subprocess.run([str(BIN / "mypy")], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-4000:]
