"""What a SpeculativeService may put into its pods: allowed images, env without Secrets."""

from __future__ import annotations

from typing import Any

from smartspec_operator.admission import violations
from smartspec_operator.settings import OperatorSettings
from smartspec_operator.spec import parse_service_spec

SETTINGS = OperatorSettings(target_image="reg/smartspec-target:1", draft_image="reg/smartspec-draft:1",
                            controller_image="reg/smartspec-controller:1")


def spec(**kw: Any) -> Any:
    body = {"target": {"model": {"name": "m", "uri": "pvc://models/m"}},
            "draft": {"model": {"name": "d", "uri": "pvc://models/d"}}}
    for role, extra in kw.items():
        body[role] = {**body.get(role, {}), **extra}
    return parse_service_spec(body)


def test_the_default_images_and_harmless_env_pass() -> None:
    env = [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}, {"name": "X", "value": "1"},
           {"name": "C", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}}]
    assert violations(spec(target={"image": "reg/smartspec-target:1", "env": env}), SETTINGS) == []


def test_foreign_images_and_secret_env_are_refused_unless_allowed() -> None:
    bad = spec(target={"image": "attacker/miner:1"}, controller={"image": "x/y:2"},
               draft={"env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}]})
    found = violations(bad, SETTINGS)
    assert len(found) == 3 and "target.image 'attacker/miner:1'" in found[0] and "controller.image" in found[1]
    assert "draft.env T: valueFrom secretKeyRef" in found[2]
    opened = SETTINGS.model_copy(update={"allowed_images": "attacker/, x/y:2", "allow_env_from_secrets": True})
    assert violations(bad, opened) == []
    # A prefix allows only what is under it; a plain entry only that image.
    assert violations(spec(target={"image": "attacker-other/miner:1"}), opened)
    assert violations(spec(controller={"image": "x/y:3"}), opened)
