"""The policy in force on a target: one frozen value, the local default or built from a published document."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

from smartspec.policy.cost_model import CostModel
from smartspec.policy.limits import cap_k
from smartspec.policy.policy import PolicyConfig

if TYPE_CHECKING:  # the scheduler imports this module; it needs no pydantic at run time
    from smartspec.policy.document import PolicyDocument


@dataclass(frozen=True)
class PolicyInForce:
    """Everything a policy sets on a target; `Scheduler.apply_policy` puts one in force as a whole."""

    config: PolicyConfig
    cost_model: CostModel
    version: int = 0  # of the published document; 0 is the target's local default
    # Acceptance prior per workload class; a class not listed uses the tracker's configured prior.
    priors: Mapping[str, Sequence[float]] = field(default_factory=dict)
    allow_request_override: bool = True  # whether a request's own `speculation` settings count
    refit: bool = True  # whether the target refits its cost model from its own steps

    def __post_init__(self) -> None:
        # Read-only, so the value stays what was put in force.
        object.__setattr__(self, "priors", MappingProxyType({c: tuple(r) for c, r in self.priors.items()}))


def from_document(doc: PolicyDocument, local: PolicyInForce, *, can_speculate: bool) -> PolicyInForce:
    """What `doc` puts in force on a target whose local default is `local`.

    The engine's K (the local max_k) stays a hard bound and fixed k follows K down; a target without
    a draft runs "off" whatever the mode; the local knobs the document does not set are kept."""
    max_k = cap_k(doc.max_k, local.config.max_k)
    config = replace(local.config, mode=doc.mode if can_speculate else "off", max_k=max_k,
                     fixed_k=cap_k(doc.fixed_k, max_k), hysteresis=doc.hysteresis)
    # The controller fits on the whole fleet's steps; a local refit would undo its model. Until it has fitted
    # anything, the target's own model (calibrated at start-up, refitted locally) knows more than its guess.
    if not doc.cost_model_fitted:
        return PolicyInForce(config, local.cost_model, doc.version, doc.acceptance_prior,
                             allow_request_override=doc.per_request_override, refit=True)
    return PolicyInForce(config, doc.model_cost(), doc.version, doc.acceptance_prior,
                         allow_request_override=doc.per_request_override, refit=False)
