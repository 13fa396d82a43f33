"""A real Prometheus (Debian's `prometheus`) scraping loopback targets into a temporary TSDB."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from smartspec.cli.up import free_port


class Prometheus:
    def __init__(self, targets: dict[str, str], scrape_interval: str = "500ms",
                 labels: dict[str, dict[str, str]] | None = None) -> None:
        """targets: job → host:port; labels: job → static labels its samples carry (as a ServiceMonitor's
        relabelings would add)."""
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError("no prometheus binary: run scripts/setup.sh (installs Debian's prometheus)")
        self.dir = tempfile.TemporaryDirectory(prefix="smartspec-prom-")
        static = {job: ", ".join(f"{k}: '{v}'" for k, v in (labels or {}).get(job, {}).items()) for job in targets}
        jobs = "".join(f"  - job_name: {job}\n    static_configs:\n      - targets: ['{address}']\n"
                       + (f"        labels: {{{static[job]}}}\n" if static[job] else "")
                       for job, address in targets.items())
        config = Path(self.dir.name) / "prometheus.yml"
        config.write_text(f"global:\n  scrape_interval: {scrape_interval}\n  evaluation_interval: 1s\n"
                          f"scrape_configs:\n{jobs}")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}",
             f"--storage.tsdb.path={self.dir.name}/tsdb", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited at startup"
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("prometheus did not become ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query; raises on a PromQL error, returns the result vector."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = r.json()
        if body.get("status") != "success":
            raise ValueError(f"PromQL {promql!r}: {body.get('errorType')}: {body.get('error')}")
        return list(body["data"]["result"])

    def targets_up(self) -> bool:
        return all(float(s["value"][1]) == 1.0 for s in self.query("up")) and len(self.query("up")) > 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        self.dir.cleanup()
