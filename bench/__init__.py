"""Benchmarks (scripts print ratios measured in one run)."""
