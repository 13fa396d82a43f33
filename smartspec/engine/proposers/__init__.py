"""Proposers: where draft tokens come from (a draft model, n-gram prompt lookup, later a remote draft)."""

from smartspec.engine.proposers.base import Proposal, Proposer, ProposeRequest

__all__ = ["Proposal", "ProposeRequest", "Proposer"]
