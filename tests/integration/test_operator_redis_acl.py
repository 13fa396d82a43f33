"""Redis with a password and a user per service (real redis-server with requirepass, a real operator process
against kmock, a real controller and target logging in as the service's user): a service's pods can touch
only their own keys, and no password is in a ConfigMap or a URL."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from smartspec.telemetry.keys import policy_key, steps_key
from tests.integration.conftest import LoopThread
from tests.integration.control_plane import metric, published, start_controller, stop_all, wait_for
from tests.integration.kube_api import KubeApi
from tests.integration.redis_server import RedisServer
from tests.integration.services import start_stack
from tests.integration.test_operator import NS, Operator, created, reconciled, service

ADMIN = secrets.token_urlsafe(24)


@pytest.fixture(scope="module")
def locked_redis() -> Iterator[RedisServer]:
    server = RedisServer(password=ADMIN).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plane(locked_redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("redis-admin")
    (d / "password").write_text(ADMIN + "\n")
    kube = KubeApi()
    op = Operator(kube, locked_redis.url, SMARTSPEC_OPERATOR_REDIS_PASSWORD_FILE=str(d / "password"))
    try:
        wait_for(op.healthy, 30, "the operator's /healthz", every_s=0.1)
        yield {"kube": kube, "operator": op}
        assert "Traceback" not in op.output(), op.output()[-4000:]
    finally:
        op.stop()
        kube.stop()


def _user_of(kube: KubeApi, name: str) -> tuple[str, str, dict[str, str]]:
    config = kube.get("ConfigMap", f"{name}-config")
    secret = kube.get("Secret", f"{name}-auth")
    assert config is not None and secret is not None
    data = config["data"]
    password = base64.b64decode(secret["data"]["redis-password"]).decode().strip()
    return data["SMARTSPEC_TARGET_REDIS_URL"], password, data


def test_each_service_logs_in_as_its_own_user_limited_to_its_keys(plane: dict[str, Any], locked_redis: RedisServer,
                                                                  loop_thread: LoopThread,
                                                                  tiny_svc_models: dict[str, Any],
                                                                  tmp_path: Path) -> None:
    kube = plane["kube"]
    created(kube, service("acl"))
    reconciled(kube, "acl")
    url, password, data = _user_of(kube, "acl")
    sid = f"{NS}.acl"
    assert url == f"redis://smartspec-{sid}@127.0.0.1:{locked_redis.port}" and password not in str(data)
    assert data["SMARTSPEC_TARGET_REDIS_PASSWORD_FILE"] == data["SMARTSPEC_CONTROLLER_REDIS_PASSWORD_FILE"]
    mine = redis.Redis.from_url(url, password=password, decode_responses=True)
    wait_for(lambda: _can_ping(mine), 10, "the service's Redis user")
    mine.xadd(steps_key(sid), {"probe": "1"})  # its own keys: yes
    for forbidden in (lambda: mine.set(policy_key(f"{NS}.other"), "{}"), lambda: mine.get("unrelated"),
                      lambda: mine.flushall(), lambda: mine.keys("*"), lambda: mine.config_get("requirepass"),
                      lambda: mine.publish(f"smartspec:{NS}.other:policy", "x")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            forbidden()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(url, password="wrong-" + password).ping()
    mine.delete(steps_key(sid))

    # The real parts, as that user: the controller publishes (Lua CAS, consumer group, status), the target
    # writes its step records and follows the policy.
    (tmp_path / "pw").write_text(password + "\n")
    ctl = start_controller(loop_thread, url, service=sid, redis_password_file=str(tmp_path / "pw"))
    stack = start_stack(loop_thread, tiny_svc_models, draft=None, redis_url=url, service=sid,
                        redis_password_file=str(tmp_path / "pw"))
    try:
        doc = wait_for(lambda: published(mine, sid), 10, "a policy published as the service's user")
        r = httpx.post(f"{stack.url}/v1/completions", timeout=60,
                       json={"model": "target", "prompt": "x", "max_tokens": 4, "ignore_eos": True})
        assert r.status_code == 200
        wait_for(lambda: mine.xlen(steps_key(sid)) >= 4, 10, "step records written as the service's user")
        wait_for(lambda: ctl.window.records >= 4, 10, "the controller reading them")
        wait_for(lambda: metric(stack.url, "smartspec_policy_version") >= doc.version, 5,
                 "the policy in force on the target, read as the service's user")
    finally:
        stop_all(stack.stop, lambda: loop_thread.run(ctl.stop()), mine.close)


def test_a_restarted_redis_gets_the_users_back_and_a_deleted_service_loses_its_own(
        plane: dict[str, Any], locked_redis: RedisServer) -> None:
    kube = plane["kube"]
    created(kube, service("gone"))
    reconciled(kube, "gone")
    url, password, _ = _user_of(kube, "gone")
    locked_redis.stop()
    locked_redis.start()  # in memory: every user but the default one is gone
    mine = redis.Redis.from_url(url, password=password)
    wait_for(lambda: _can_ping(mine), 15, "the operator's next converge to recreate the user")
    assert kube.delete("SpeculativeService", "gone").status_code in (200, 202)
    admin = locked_redis.client()
    wait_for(lambda: f"smartspec-{NS}.gone" not in admin.acl_users(), 30, "the user deleted with its service")
    mine.close()
    admin.close()


def _can_ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False
