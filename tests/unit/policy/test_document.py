"""PolicySpec (operator → controller) and PolicyDocument (controller → targets) validation."""

from __future__ import annotations

import time

import pytest

from smartspec.policy.cost_model import PRESETS
from smartspec.policy.document import PolicyDocument, default_spec, parse_document, parse_spec


def doc(**kw: object) -> PolicyDocument:
    now = time.time()
    base: dict[str, object] = dict(service="s", version=3, mode="goodput", max_k=6, fixed_k=2, hysteresis=1.1,
                                   cost_model=PRESETS["h100-llama8b"].to_dict(), issued_at=now, expires_at=now + 30,
                                   decided_by="test", acceptance_prior={"default": [0.8, 0.7]})
    base.update(kw)
    return PolicyDocument.model_validate(base)


def test_spec_uses_the_crd_field_names_and_defaults() -> None:
    spec = parse_spec('{"mode": "fixed", "maxSpeculationLength": 5, "fixedSpeculationLength": 4, '
                      '"costModel": {"source": "preset", "preset": "h100-llama70b"}, "policyExpirySeconds": 10}')
    assert (spec.mode, spec.max_k, spec.fixed_k, spec.expiry_s) == ("fixed", 5, 4, 10)
    assert spec.cost_model.preset == "h100-llama70b"
    d = default_spec()
    assert (d.mode, d.max_k, d.hysteresis, d.per_request_override.allowed) == ("goodput", 8, 1.1, True)


@pytest.mark.parametrize("raw, field", [
    ({"mode": "turbo"}, "mode"),
    ({"maxSpeculationLength": 17}, "maxSpeculationLength"),
    ({"maxSpeculationLength": 3, "fixedSpeculationLength": 4}, "fixedSpeculationLength"),
    ({"hysteresis": 0.9}, "hysteresis"),
    ({"acceptance": {"prior": 1.5}}, "acceptance.prior"),
    ({"costModel": {"source": "preset", "preset": "a100-imaginary"}}, "preset"),
    ({"costModel": {"source": "coefficients", "coefficients": {"verify": {"warp": 1}}}}, "warp"),
    ({"maxSpecLength": 3}, "maxSpecLength"),
    ({"costModel": {"source": "coefficients", "coefficients": {"verify": {"const": None}}}},
     "verify.const must be a number"),
    ({"hysteresis": float("nan")}, "hysteresis"),
])
def test_spec_errors_name_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        parse_spec(raw)


def test_document_round_trip_and_expiry() -> None:
    d = doc()
    again = parse_document(d.model_dump_json())
    assert again == d and not again.expired()
    assert again.expired(now=d.expires_at) and again.model_cost().name == "h100-llama8b"


@pytest.mark.parametrize("kw, why", [
    ({"schema_version": 2}, "schema_version"),
    ({"fixed_k": 7}, "fixed_k"),
    ({"version": 0}, "version"),
    ({"acceptance_prior": {"default": [1.2]}}, "acceptance_prior"),
    ({"cost_model": {"verify": {"nope": 1.0}}}, "nope"),
    ({"expires_at": 0.0}, "expires_at"),
    ({"expires_at": float("inf")}, "expires_at"),
    ({"cost_model": {"verify": {"const": None}}}, "verify.const must be a number"),
    ({"cost_model": {"verify": [1]}}, "malformed cost model"),
    # Hardening: what a hand-written document in Redis could carry to lock or mislead the fleet.
    ({"version": 2**53}, "version"),
    ({"expires_at": time.time() + 10 * 86_400}, "a policy lives at most"),
    ({"cost_model": {"verify": {"const": -0.01}}}, "must not be negative"),
    ({"cost_model": {"verify": {"const": 0.01}, "draft_fraction": float("nan")}}, "draft_fraction"),
    ({"hysteresis": 1e9}, "hysteresis"),
    ({"acceptance_prior": {f"c{i}": [0.5] for i in range(65)}}, "at most 64 acceptance classes"),
    ({"acceptance_prior": {"default": [0.5] * 17}}, "at most 16 positions"),
    ({"service": ""}, "service"),
])
def test_invalid_documents_are_rejected(kw: dict[str, object], why: str) -> None:
    raw = doc().model_dump()
    raw.update(kw)
    import json

    with pytest.raises(ValueError, match=why):
        parse_document(json.dumps(raw))


def test_the_load_and_recommended_k_are_not_in_the_document_but_older_documents_still_parse() -> None:
    import json

    d = doc()
    assert "recommended_k" not in d.model_dump() and "current" not in d.model_dump()
    # Published by a controller from before they moved to the status key (a rolling update).
    older = {**d.model_dump(), "recommended_k": {"1": 4, "64": 0}, "current": {"batch_size": 3.0, "k": 2}}
    assert parse_document(json.dumps(older)) == d
    with pytest.raises(ValueError, match="surprise"):  # anything else unknown is still refused
        parse_document(json.dumps({**d.model_dump(), "surprise": 1}))


def test_documents_and_specs_are_bounded_in_size_before_they_are_parsed() -> None:
    from smartspec.policy.limits import MAX_DOCUMENT_BYTES

    big = doc().model_dump_json()[:-1] + ', "pad": "' + "x" * MAX_DOCUMENT_BYTES + '"}'
    with pytest.raises(ValueError, match=f"more than the {MAX_DOCUMENT_BYTES}"):
        parse_document(big)
    with pytest.raises(ValueError, match=r"policy spec: .* bytes"):
        parse_spec(b'{"mode": "off", "x": "' + b"y" * MAX_DOCUMENT_BYTES + b'"}')


def test_the_per_request_verify_term_may_be_negative_as_fits_make_it() -> None:
    assert doc(cost_model={"verify": {"const": 0.02, "batch": -0.001}}).model_cost().verify["batch"] == -0.001
