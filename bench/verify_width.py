"""What one more verified token costs on this machine: a batch-1 forward of width 1 … 9 over a 200-token context.

Speculating k tokens makes the target score k + 1 positions in one forward. Where the CPU has native
bf16 matrix instructions (AVX-512 BF16, AMX) that wider forward costs little more than a one-token
decode; where it has not (AVX2 only), torch runs bf16 matmuls at scalar-ish speed and every extra
position costs most of a decode step, so no k > 0 can pay. Prints ms per forward for the target and
the draft, per dtype, and the CPU's relevant flags, so a results table can say which case it is.

    python -m bench.verify_width [--dtypes bfloat16,float32] [--repeats 3] [--cpu-kernels auto,off] [--widths 1,2,3,5,9]

`--cpu-kernels auto,off` times bf16 with smartspec's AVX2 kernel (engine/cpu_bf16.py) and with torch's own path.
`--widths` picks other widths: 64 … 300 time what a prompt of that many tokens costs to prefill (over the context).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path
from typing import Literal

import torch

from smartspec.engine.runner import ModelRunner, RowInput
from smartspec.models.fetch import model_path
from smartspec.models.loading import load_model
from smartspec.models.settings import ModelSettings

WIDTHS = (1, 2, 3, 5, 9)
CONTEXT = 200


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16|amx_tile|avx512f|avx2)\b", text)))
    return ", ".join(flags) or "none of avx2/avx512/amx"


def widths_ms(role: Literal["target", "draft"], dtype: str, repeats: int,
              cpu_kernels: Literal["auto", "on", "off"] = "auto", widths: tuple[int, ...] = WIDTHS) -> dict[int, float]:
    model = load_model(str(model_path(ModelSettings(), role)), dtype=dtype, cpu_kernels=cpu_kernels)
    runner = ModelRunner(model, num_slots=1, max_len=CONTEXT + max(widths) + 64)
    runner.add(0)
    runner.forward([RowInput(0, list(range(100, 100 + CONTEXT)), 1)])  # the context, and the kernels' warm-up
    runner.commit(0, CONTEXT)
    runner.forward([RowInput(0, [5] * max(widths), max(widths))])  # first use of each shape is slower
    out = {}
    for width in widths:
        t0 = time.perf_counter()
        for _ in range(repeats):
            runner.forward([RowInput(0, list(range(5, 5 + width)), width)])  # never committed: same context
        out[width] = (time.perf_counter() - t0) / repeats * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpu-kernels", default="auto", help="comma-separated: auto, on, off (bf16 Linear layers)")
    ap.add_argument("--widths", default=",".join(map(str, WIDTHS)), help="comma-separated forward widths (tokens)")
    args = ap.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    if not widths or min(widths) < 1:
        ap.error("--widths must be positive integers")
    print(f"CPU flags: {cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    lo, hi = min(widths), max(widths)
    header = " | ".join(f"width {w} ms" for w in widths)
    print(f"| model | dtype | cpu kernels | {header} | width {hi} / width {lo} |")
    print("|---|---|---|" + "---|" * (len(widths) + 1))
    for role in ("target", "draft"):
        for dtype in args.dtypes.split(","):
            for kernels in args.cpu_kernels.split(",") if dtype == "bfloat16" else ["off"]:
                ms = widths_ms(role, dtype, args.repeats, kernels, widths)  # type: ignore[arg-type]  # load_model checks it
                cells = " | ".join(f"{ms[w]:.0f}" for w in widths)
                print(f"| {role} | {dtype} | {kernels} | {cells} | {ms[hi] / ms[lo]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
