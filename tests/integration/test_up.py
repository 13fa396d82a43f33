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


def test_up_serves_and_stops_cleanly() -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "smartspec.cli.main", "up", "--models", "tiny", "--port", str(port),
                             "--dtype", "float32", "--max-batch-size", "4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
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
        assert len(kids) >= 2  # draft and target (and redis-server when installed)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
            "model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0})
        assert r.status_code == 200 and "speculation" in r.json()["usage"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(k) for k in kids), "orphaned processes"
    finally:
        if proc.poll() is None:
            proc.kill()
