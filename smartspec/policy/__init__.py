"""The goodput policy: acceptance estimation, step-time cost model and per-request k selection.

Pure Python/numpy — no torch, no I/O — so the target, the simulator and the controller run the
same code.
"""
