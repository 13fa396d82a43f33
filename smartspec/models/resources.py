"""Disk and memory checks that turn 'the machine is too small' into a clear error up front."""

from __future__ import annotations

import shutil
from pathlib import Path

from smartspec.errors import ResourceShortage

GiB = float(1 << 30)


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo; None where the kernel does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def require_disk(path: Path, needed: int, what: str) -> None:
    """Raise ResourceShortage unless `needed` bytes are free where `path` lives."""
    free = free_disk_bytes(path)
    if free < needed:
        raise ResourceShortage(
            f"{what} needs {needed / GiB:.1f} GiB of free disk under {path}, but only "
            f"{free / GiB:.1f} GiB is free; free some space or point SMARTSPEC_MODEL_CACHE elsewhere"
        )


def require_memory(needed: int, what: str) -> None:
    """Raise ResourceShortage unless `needed` bytes of memory are available now."""
    avail = available_memory_bytes()
    if avail is not None and avail < needed:
        raise ResourceShortage(
            f"{what} needs about {needed / GiB:.1f} GiB of free memory, but only {avail / GiB:.1f} GiB "
            "is available; stop other jobs (or run the conversion alone) and retry"
        )
