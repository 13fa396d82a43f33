"""The operator's Kubernetes client (operator/smartspec_operator/kube.py) against the emulated API over HTTP."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

from smartspec_operator.kube import FIELD_MANAGER, ApplyConflict, Kube, KubeError, NotOwned
from tests.integration.kube_api import KubeApi


@pytest.fixture(scope="module")
def api() -> Iterator[KubeApi]:
    server = KubeApi()
    yield server
    server.stop()


def config_map(name: str, owner: str | None = "u-1", **data: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default"}
    if owner:
        meta["ownerReferences"] = [{"apiVersion": "smartspec.io/v1alpha1", "kind": "SpeculativeService",
                                    "name": "svc", "uid": owner, "controller": True}]
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def run(api: KubeApi, body: Any) -> Any:
    async def go() -> Any:
        kube = Kube(timeout_s=5)
        kube.use(kopf.ConnectionInfo(server=api.url))
        try:
            return await body(kube)
        finally:
            await kube.close()
    return asyncio.run(go())


def test_apply_creates_then_is_a_no_op_then_patches_and_removes_what_it_dropped(api: KubeApi) -> None:
    async def body(kube: Kube) -> list[str]:
        return [await kube.apply(config_map("c1", a="1", b="2"), owner_uid="u-1"),
                await kube.apply(config_map("c1", a="1", b="2"), owner_uid="u-1"),
                await kube.apply(config_map("c1", a="3"), owner_uid="u-1")]
    assert run(api, body) == ["created", "unchanged", "patched"]
    live = api.get("ConfigMap", "c1")
    assert live is not None and live["data"] == {"a": "3"}  # b was dropped from what the operator applies
    assert {(m["manager"], m["operation"]) for m in live["metadata"]["managedFields"]} == {(FIELD_MANAGER, "Apply")}
    assert not live["metadata"].get("annotations")  # no last-applied copy of the object


def test_a_field_someone_else_set_is_a_conflict_not_an_overwrite(api: KubeApi) -> None:
    run(api, lambda kube: kube.apply(config_map("c2", a="1")))
    assert api.patch("ConfigMap", "c2", {"data": {"a": "mine"}}, manager="someone").status_code == 200

    async def body(kube: Kube) -> None:
        await kube.apply(config_map("c2", a="1"), owner_uid="u-1")
    with pytest.raises(ApplyConflict, match=r'conflict with "someone": \.data\.a') as exc:
        run(api, body)
    assert not exc.value.temporary  # reported, not retried at once
    assert api.existing("ConfigMap", "c2")["data"] == {"a": "mine"}


def test_an_object_of_another_owner_is_refused_and_untouched(api: KubeApi) -> None:
    assert api.create(config_map("c3", owner=None, a="theirs")).status_code in (200, 201)

    async def body(kube: Kube) -> None:
        await kube.apply(config_map("c3", a="ours"), owner_uid="u-1")
    with pytest.raises(NotOwned, match="not owned by this SpeculativeService"):
        run(api, body)
    assert api.existing("ConfigMap", "c3")["data"] == {"a": "theirs"}


def test_create_once_keeps_what_exists_and_errors_carry_the_status(api: KubeApi) -> None:
    async def body(kube: Kube) -> list[Any]:
        made = [await kube.create_once("ConfigMap", "default", "c4", lambda: config_map("c4", a="1"), "u-1"),
                await kube.create_once("ConfigMap", "default", "c4", lambda: config_map("c4", a="2"), "u-1")]
        missing = await kube.get("ConfigMap", "default", "nope")
        gone = await kube.delete("ConfigMap", "default", "nope")
        try:
            await kube.patch("ConfigMap", "default", "nope", {"data": {"a": "1"}})
        except KubeError as exc:
            return [*made, missing, gone, exc.status]
        return [*made, missing, gone, None]
    assert run(api, body) == ["created", "unchanged", None, False, 404]
    assert api.existing("ConfigMap", "c4")["data"] == {"a": "1"}


def test_unreachable_and_not_logged_in_are_temporary_errors(api: KubeApi) -> None:
    async def body() -> list[KubeError]:
        out = []
        for info in (None, kopf.ConnectionInfo(server="http://127.0.0.1:9")):
            kube = Kube(timeout_s=2)
            if info is not None:
                kube.use(info)
            try:
                await kube.get("ConfigMap", "default", "x")
            except KubeError as exc:
                out.append(exc)
            await kube.close()
        return out
    errors = asyncio.run(body())
    assert [e.status for e in errors] == [0, 0] and all(e.temporary for e in errors)


def test_certificate_data_from_a_kubeconfig_goes_to_private_files_removed_on_close() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    kube = Kube()
    conf = kube._configuration(kopf.ConnectionInfo(server="https://k8s.example:6443", ca_data=pem,
                                                   token="t0ken", scheme="Bearer"))
    assert conf.ssl_ca_cert is not None
    with open(conf.ssl_ca_cert) as f:
        assert f.read() == pem
    assert stat.S_IMODE(os.stat(conf.ssl_ca_cert).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(conf.ssl_ca_cert)).st_mode) == 0o700
    assert conf.cert_file is None and conf.key_file is None and conf.verify_ssl
    asyncio.run(kube.close())
    assert not os.path.exists(conf.ssl_ca_cert)
