"""Policies by name (`off`, `fixed:K`, `goodput`, `goodput-uniform`), built as the target builds them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from smartspec.errors import InvalidRequest
from smartspec.policy.acceptance import AcceptanceConfig, AcceptanceTracker
from smartspec.policy.cost_model import CostModel
from smartspec.policy.policy import PolicyConfig, SpeculationPolicy

DEFAULT_POLICIES = ("off", "fixed:1", "fixed:3", "fixed:5", "fixed:7", "goodput")


@dataclass(frozen=True)
class PolicyKnobs:
    """The goodput policy's settings; None keeps the target's default (PolicyConfig / AcceptanceConfig)."""

    hysteresis: float = PolicyConfig.hysteresis
    probe_every: int | None = None
    explore_every: int | None = None
    acceptance_prior: tuple[float, ...] | None = None


def policy_config(name: str, max_k: int, knobs: PolicyKnobs | None = None) -> PolicyConfig:
    """`off`, `fixed:K` (0 <= K <= max_k; fixed:0 is off) or `goodput`, with the target's defaults otherwise."""
    knobs = knobs or PolicyKnobs()
    try:
        if name == "off":
            return PolicyConfig(mode="off", max_k=max_k, fixed_k=0)
        if name in ("goodput", "goodput-uniform"):
            config = PolicyConfig(mode=name, max_k=max_k, fixed_k=0, hysteresis=knobs.hysteresis)  # type: ignore[arg-type]
            if knobs.probe_every is not None:
                config = replace(config, probe_every=knobs.probe_every)
            if knobs.explore_every is not None:
                config = replace(config, explore_every=knobs.explore_every)
            return config
        if name.startswith("fixed:"):
            k = int(name.split(":", 1)[1])
            if not 0 <= k <= max_k:
                raise ValueError(f"fixed:K needs 0 <= K <= max k ({max_k})")
            return PolicyConfig(mode="fixed", max_k=max_k, fixed_k=k)
    except ValueError as exc:
        raise InvalidRequest(f"policy {name!r}: {exc}", param="policies") from None
    raise InvalidRequest(f"unknown policy {name!r}; use off, fixed:K, goodput or goodput-uniform", param="policies")


def build_policy(name: str, cost: CostModel, max_k: int, knobs: PolicyKnobs | None = None) -> SpeculationPolicy:
    """A SpeculationPolicy exactly as the target builds one (`SpeculationPolicy(config, cost)`), except that
    the acceptance tracker covers K positions when K exceeds its default (the target's stops at 8)."""
    knobs = knobs or PolicyKnobs()
    config = policy_config(name, max_k, knobs)
    default = AcceptanceConfig()
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=max(max_k, default.max_k),
                                                 prior=knobs.acceptance_prior or default.prior))
    return SpeculationPolicy(config, cost, tracker)


def canonical(name: str) -> str:
    """`fixed:0` is `off`."""
    return "off" if name.replace(" ", "") == "fixed:0" else name.strip()
