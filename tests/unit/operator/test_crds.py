"""The CRDs, the operator's models and the sample CRs agree: what the API server admits, the operator accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from smartspec.policy.document import parse_spec
from smartspec_operator.spec import parse_service_spec
from tests.crd_admission import Invalid, admit, crds

SAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples" / "kubernetes").glob("*.yaml"))


def sample_objects() -> list[dict[str, Any]]:
    return [doc for path in SAMPLES for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_crds_are_structural_with_status_and_columns() -> None:
    for kind, crd in crds().items():
        version = crd["spec"]["versions"][0]
        assert crd["spec"]["group"] == "smartspec.io" and version["name"] == "v1alpha1"
        assert version["subresources"] == {"status": {}}
        assert version["schema"]["openAPIV3Schema"]["properties"]["status"]["type"] == "object"
        names = [c["name"] for c in version["additionalPrinterColumns"]]
        assert names == {"SpeculativeService": ["Ready", "Target", "Draft", "K", "Goodput", "Age"],
                         "SpeculationPolicy": ["Mode", "K-Max", "Version", "Age"]}[kind]


@pytest.mark.parametrize("obj", sample_objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_every_sample_is_admitted_and_understood(obj: dict[str, Any]) -> None:
    admitted = admit(obj)
    if obj["kind"] == "SpeculativeService":
        parse_service_spec(admitted["spec"])
    else:
        parse_spec(admitted["spec"])


def test_defaults_agree() -> None:
    """The CRD's defaults are the operator's and the controller's defaults."""
    pol = admit({"apiVersion": "smartspec.io/v1alpha1", "kind": "SpeculationPolicy", "metadata": {"name": "p"}})
    assert parse_spec(pol["spec"]) == parse_spec({})
    svc = admit({"apiVersion": "smartspec.io/v1alpha1", "kind": "SpeculativeService", "metadata": {"name": "s"},
                 "spec": {"target": {"model": {"name": "m", "uri": "/w/m"}},
                          "draft": {"model": {"name": "d", "uri": "pvc://w/d"}}}})
    assert parse_service_spec(svc["spec"]) == parse_service_spec(
        {"target": {"model": {"name": "m", "uri": "/w/m"}}, "draft": {"model": {"name": "d", "uri": "pvc://w/d"}}})
    assert parse_service_spec(svc["spec"]).tls.enabled  # mutual TLS between the parts unless switched off
    tls = admit({"apiVersion": "smartspec.io/v1alpha1", "kind": "SpeculativeService", "metadata": {"name": "s"},
                 "spec": {"target": {"model": {"name": "m", "uri": "/w/m"}}, "tls": {}}})
    assert tls["spec"]["tls"] == {"enabled": True}


@pytest.mark.parametrize("spec", [
    {"maxSpeculationLength": 17}, {"maxSpeculationLength": -1}, {"mode": "sometimes"},
    {"maxSpeculationLength": 2, "fixedSpeculationLength": 3}, {"hysteresis": 0.5},
    {"acceptance": {"prior": 1.0}}, {"costModel": {"source": "preset"}}, {"costModel": {"source": "bogus"}},
    {"policyExpirySeconds": 1},
])
def test_both_layers_refuse_bad_policies(spec: dict[str, Any]) -> None:
    with pytest.raises(Invalid):
        admit({"apiVersion": "smartspec.io/v1alpha1", "kind": "SpeculationPolicy", "metadata": {"name": "p"},
               "spec": spec})
    with pytest.raises(ValueError):
        parse_spec(spec)


@pytest.mark.parametrize("graphs", ["sometimes", True])  # True: what a bare `graphs: on` parses to in YAML
def test_both_layers_refuse_bad_graphs(graphs: object) -> None:
    spec = {"target": {"model": {"name": "m", "uri": "/w/m"}, "graphs": graphs}}
    with pytest.raises(Invalid):
        admit({"apiVersion": "smartspec.io/v1alpha1", "kind": "SpeculativeService", "metadata": {"name": "s"},
               "spec": spec})
    with pytest.raises(ValueError):
        parse_service_spec(spec)
