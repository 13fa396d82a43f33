"""The four images as built by scripts/build_images.sh (tests/integration/images.py runs them without a
container runtime): each entrypoint answers, as the non-root user the chart expects, on a read-only root;
the services start and serve their health from inside the image, with the files the operator mounts;
the operator image has no torch; nothing from the build (tools, caches, wheels, sources) is left in them."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from smartspec import tls
from tests.integration.conftest import free_port
from tests.integration.images import MountedImage, added_layers, image_history, readable_copy, tags

pytestmark = [pytest.mark.images, pytest.mark.skipif(shutil.which("buildah") is None,
                                                        reason="buildah is not installed (scripts/setup.sh)")]
TOKEN = "peer-token-" + "i" * 32
UID = "10001"


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, MountedImage]]:
    mounted: dict[str, MountedImage] = {}
    try:
        for role, tag in tags().items():
            try:
                mounted[role] = MountedImage(tag)
            except Exception as exc:
                pytest.fail(f"image {tag} is not built (scripts/build_images.sh): {exc}")
        yield mounted
    finally:
        for m in mounted.values():
            m.close()


@pytest.fixture(scope="module")
def files(tiny_svc_models: dict[str, Any]) -> Iterator[dict[str, str]]:
    """What the operator mounts into the pods, readable by the image's user only: models, peer token, certs."""
    d = Path(tempfile.mkdtemp(prefix="smartspec-image-files-"))
    d.chmod(0o755)
    (d / "src").mkdir()
    (d / "src" / "peer-token").write_text(TOKEN + "\n")
    (d / "src" / "api-keys").write_text("sk-image-test-" + "k" * 24 + "\n")
    tls.write_dir(d / "src" / "tls", tls.issue(["127.0.0.1", "localhost"]))
    out = {"client-tls": str(d / "src" / "tls")}
    for name, src in (("target", tiny_svc_models["target"]), ("draft", tiny_svc_models["draft"]),
                      ("peer-token", d / "src" / "peer-token"), ("api-keys", d / "src" / "api-keys"),
                      ("tls", d / "src" / "tls")):
        out[name] = str(readable_copy(src, d / "mounted" / name))
    yield out
    shutil.rmtree(d, ignore_errors=True)


def _wait(check: Any, proc: Any, what: str, timeout_s: float = 120) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc: Any) -> None:
    MountedImage.stop(proc)


def test_every_entrypoint_answers_as_the_non_root_user_on_a_read_only_root(images: dict[str, MountedImage]) -> None:
    for role, image in images.items():
        assert image.config.get("User") == UID, f"{role} runs as {image.config.get('User')!r}"
        out = image.run(["--help"])
        assert out.returncode == 0 and "usage: smartspec" in out.stdout, f"{role}:\n{out.stdout[-2000:]}"
        # The root filesystem is read-only (the chart sets readOnlyRootFilesystem); /tmp is the pods' emptyDir.
        probe = image.run(["sh", "-c", "id -u; touch /opt/x 2>/dev/null && echo writable; touch /tmp/x && echo tmp"],
                          entrypoint=False)
        assert probe.stdout.split() == [UID, "tmp"], f"{role}: {probe.stdout}"


def test_the_draft_image_serves_mutual_tls_and_its_health(images: dict[str, MountedImage],
                                                          files: dict[str, str]) -> None:
    port = free_port()
    proc = images["draft"].start(
        ["--port", str(port), "--model", "/models/draft", "--dtype", "float32", "--auth-token-file",
         "/etc/smartspec/auth/peer-token", "--tls-dir", "/etc/smartspec/tls"],
        binds={files["draft"]: "/models/draft", files["peer-token"]: "/etc/smartspec/auth/peer-token",
               files["tls"]: "/etc/smartspec/tls"})
    try:
        creds = tls.load(files["client-tls"], "tls_dir")

        def serving() -> bool:
            with grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(
                    creds.ca, creds.key, creds.cert)) as channel:
                r = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                return r.status == health_pb2.HealthCheckResponse.SERVING

        _wait(serving, proc, "the draft image's gRPC health over mutual TLS")
    finally:
        _stop(proc)


def test_the_controller_image_serves_health(images: dict[str, MountedImage], files: dict[str, str],
                                            redis_db: Any) -> None:
    http, otlp = free_port(), free_port()
    proc = images["controller"].start(
        ["--redis-url", redis_db.url, "--http-port", str(http), "--otlp-port", str(otlp), "--otlp-token-file",
         "/etc/smartspec/auth/peer-token", "--tls-dir", "/etc/smartspec/tls"],
        binds={files["peer-token"]: "/etc/smartspec/auth/peer-token", files["tls"]: "/etc/smartspec/tls"})
    try:
        health = _wait(lambda: (r := httpx.get(f"http://127.0.0.1:{http}/health", timeout=2)).status_code == 200
                       and r.json(), proc, "the controller image's /health")
        assert health["redis"] is True
    finally:
        _stop(proc)


def test_the_target_image_serves_health_and_a_completion(images: dict[str, MountedImage],
                                                         files: dict[str, str]) -> None:
    http, grpc_port = free_port(), free_port()
    proc = images["target"].start(
        ["--model", "/models/target", "--served-model-name", "target", "--dtype", "float32", "--http-port",
         str(http), "--grpc-port", str(grpc_port), "--api-key-file", "/etc/smartspec/api/api-keys"],
        binds={files["target"]: "/models/target", files["api-keys"]: "/etc/smartspec/api/api-keys"})
    try:
        _wait(lambda: httpx.get(f"http://127.0.0.1:{http}/health", timeout=2).status_code == 200, proc,
              "the target image's /health")
        key = Path(files["api-keys"]).read_text().strip()
        r = httpx.post(f"http://127.0.0.1:{http}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                       json={"model": "target", "prompt": "def f(x):", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    finally:
        _stop(proc)


def test_the_operator_image_imports_without_torch_or_grpc(images: dict[str, MountedImage]) -> None:
    code = ("import importlib.util as u, smartspec_operator.handlers, smartspec_operator.runner; "
            "print(sorted(m for m in ('torch', 'grpc', 'transformers') if u.find_spec(m)))")
    out = images["operator"].run(["python3", "-c", code], entrypoint=False)
    assert out.returncode == 0 and out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_no_build_tool_cache_wheel_source_or_secret_is_left_in_an_image(images: dict[str, MountedImage]) -> None:
    for role, image in images.items():
        root = image.root
        for tool in ("pip", "pip3", "gcc", "cc", "make", "git"):
            assert not (root / "opt/smartspec/bin" / tool).exists() and not (root / "usr/bin" / tool).exists(), \
                f"{role} has {tool}"
        for leftover in ("app", "wheelhouse", "root/.cache/pip", "etc/pip.conf"):
            assert not (root / leftover).exists(), f"{role} keeps /{leftover}"
        assert not list((root / "opt/smartspec").rglob("*.whl")), f"{role} keeps wheels"
        # ... nor in any layer the build added (a file removed later would still ship in the layer below).
        base = (image.config.get("Labels") or {}).get("io.smartspec.base-image")  # build_images.sh labels it
        assert base, f"{role}: no base-image label"
        for n, names in enumerate(added_layers(image.image, base), 1):
            bad = [p for p in names if p.endswith(".whl") or "/site-packages/pip/" in p or p.startswith(
                ("root/.cache", "etc/pip.conf", "wheelhouse/")) or p.rsplit("/", 1)[-1] in ("pip", "pip3")]
            assert not bad, f"{role}: layer {n} of the build holds {bad[:5]}"
        env = " ".join(image.config.get("Env") or [])
        history = json.dumps(image_history(image.image))
        for word in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PASSWORD", "TOKEN"):
            assert word not in env and word not in history, f"{role}: {word} in its config or history"
