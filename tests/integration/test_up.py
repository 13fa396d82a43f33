"""`smartspec up --models tiny`: the whole stack as processes; a real request; SIGTERM leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.conftest import free_port


def children_of(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SMARTSPEC_STACK_FILE": str(tmp_path / "stack.json")}
    proc = subprocess.Popen([sys.executable, "-m", "smartspec.cli.main", "up", "--models", "tiny", "--port", str(port),
                             "--dtype", "float32", "--max-batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "smartspec is up" in line or not line:
                break
        assert any("smartspec is up" in line for line in lines), "".join(lines)
        assert f"http://127.0.0.1:{port}/v1" in lines[-1]
        kids = children_of(proc.pid)
        assert len(kids) == 4, "".join(lines)  # redis-server, controller, draft, target
        assert any("controller: http://127.0.0.1:" in line for line in lines)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and "speculation" in r.json()["usage"]
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
