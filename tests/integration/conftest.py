"""Real services on loopback port 0: an event loop thread hosts them, tests talk HTTP/gRPC from outside."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from smartspec.models.tiny import tiny_pair
from smartspec.v1 import draft_pb2, draft_pb2_grpc


class LoopThread:
    """An asyncio loop on a background thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="session")
def tiny_svc_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny Qwen2-architecture pair on disk, plus the in-memory objects for references."""
    pair = tiny_pair("qwen2", seed=0)
    target, draft = pair.save(tmp_path_factory.mktemp("svc-models"))
    return {"pair": pair, "target": str(target), "draft": str(draft)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


class DraftProcess:
    """`smartspec serve-draft` as a real child process, so tests can kill, stop and restart it."""

    def __init__(self, model: str, port: int) -> None:
        self.model, self.port = model, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DraftProcess:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smartspec.cli.main", "serve-draft", "--model", self.model, "--port",
             str(self.port), "--dtype", "float32"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
                    draft_pb2_grpc.DraftServiceStub(ch).GetInfo(draft_pb2.DraftInfoRequest(), timeout=1)
                    return self
            except grpc.RpcError:
                assert self.proc.poll() is None, "draft process died at startup"
                time.sleep(0.2)
        raise TimeoutError("draft process did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def draft_process(tiny_svc_models: dict[str, Any]) -> Iterator[DraftProcess]:
    proc = DraftProcess(tiny_svc_models["draft"], free_port()).start()
    yield proc
    proc.kill()


def tiny_paths(models: dict[str, Any]) -> tuple[Path, Path]:
    return Path(models["target"]), Path(models["draft"])


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """One real redis-server per test session; each test starts from an empty database."""
    from tests.integration.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_db(redis_server: Any) -> Any:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()  # a fault test may have stopped it
    client = redis_server.client()
    client.flushall()
    yield redis_server
    client.close()


@pytest.fixture(scope="session")
def small_svc_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A ~25M-parameter pair: steps long enough (~20-50 ms here) that compute, not scheduling jitter,
    sets their duration, as with real models; for tests that judge the cost model."""
    from smartspec.models.tiny import TinyShape

    shape = TinyShape(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536)
    target, draft = tiny_pair("qwen2", seed=0, shape=shape, draft_layers=2).save(tmp_path_factory.mktemp("small"))
    return {"target": str(target), "draft": str(draft)}
