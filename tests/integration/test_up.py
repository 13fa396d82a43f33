"""`smartspec up --models tiny`: the whole stack as processes; a real request; SIGTERM leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration.conftest import children_of, free_port


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_up(tmp_path: Path, port: int, *extra: str) -> tuple[subprocess.Popen[str], list[str], dict[str, str]]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SMARTSPEC_STACK_FILE": str(tmp_path / "stack.json")}
    proc = subprocess.Popen([sys.executable, "-m", "smartspec.cli.main", "up", "--models", "tiny", "--port", str(port),
                             "--dtype", "float32", "--max-batch-size", "4", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "smartspec is up" in line or not line:
            break
    assert any("smartspec is up" in line for line in lines), "".join(lines)
    return proc, lines, env


def test_a_killed_up_takes_its_processes_with_it(tmp_path: Path) -> None:
    # SIGKILL runs none of `up`'s clean-up: the kernel's parent-death signal stops the parts instead
    # (before, a killed `up` left its redis-server running).
    port = free_port()
    proc, lines, _ = _start_up(tmp_path, port, "--no-auth")
    try:
        assert any("NO API KEY" in line for line in lines)
        chat = {"model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        assert httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat, timeout=60).status_code == 200
        kids = children_of(proc.pid)
        assert len(kids) == 4
        proc.kill()
        proc.wait(timeout=10)
        deadline = time.monotonic() + 60  # the target drains first (nothing running: at once)
        while any(alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(k) for k in kids), "processes outlived a killed `smartspec up`"
    finally:
        if proc.poll() is None:
            proc.kill()


def test_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    proc, lines, env = _start_up(tmp_path, port)
    try:
        assert f"http://127.0.0.1:{port}/v1" in lines[-1]
        kids = children_of(proc.pid)
        assert len(kids) == 4, "".join(lines)  # redis-server, controller, draft, target
        assert any("controller: http://127.0.0.1:" in line for line in lines)
        # Auth on by default: the key is generated, printed once, and required.
        key = next(line.split()[2] for line in lines if line.startswith("API key: "))
        chat = {"model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        assert httpx.post(url, timeout=60, json=chat).status_code == 401
        r = httpx.post(url, timeout=60, json=chat, headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200 and "speculation" in r.json()["usage"]
        stack = json.loads((tmp_path / "stack.json").read_text())
        key_file = Path(stack["api_key_file"])
        assert key_file.read_text().strip() == key and key_file.stat().st_mode & 0o077 == 0
        # The draft speaks mutual TLS (the target is connected through it) and refuses a plaintext caller.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).json() == {"status": "ok"}
        with grpc.insecure_channel(stack["draft_address"]) as channel, pytest.raises(grpc.RpcError) as info:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # `policy show` with no arguments finds this stack and its controller's policy.
        show = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            show = subprocess.run([sys.executable, "-m", "smartspec.cli.main", "policy", "show"], env=env,
                                  capture_output=True, text=True, timeout=60)
            if "policy v" in show.stdout:
                break
            time.sleep(0.5)
        assert show is not None and show.returncode == 0 and "service smartspec: policy v" in show.stdout, show
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(k) for k in kids), "orphaned processes"
        assert not (tmp_path / "stack.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
