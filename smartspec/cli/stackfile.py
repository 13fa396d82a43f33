"""Where `smartspec up` leaves the addresses of the stack it started, so other commands can find it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def stack_file() -> Path:
    override = os.environ.get("SMARTSPEC_STACK_FILE")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "smartspec" / "stack.json"


def write(info: dict[str, Any]) -> Path:
    path = stack_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**info, "pid": os.getpid()}, indent=2) + "\n")
    return path


def read() -> dict[str, Any] | None:
    """The running stack's info, or None when there is none (or its `up` process is gone)."""
    path = stack_file()
    try:
        info: dict[str, Any] = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def remove() -> None:
    path = stack_file()
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass
