"""smartspec: LLM serving with per-request, goodput-optimal speculative decoding."""

__version__ = "0.1.0"
