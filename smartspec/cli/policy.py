"""`smartspec policy explain`: what k would smartspec choose, and what goodput would it expect."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from smartspec.errors import InvalidRequest
from smartspec.policy.cost_fit import fit_cost_model
from smartspec.policy.cost_model import CostModel, load_cost_model
from smartspec.policy.limits import MAX_K_LIMIT, within
from smartspec.policy.selection import goodput, select_goodput
from smartspec.telemetry.records import BadRecord, read_jsonl


def register(sub: argparse._SubParsersAction) -> None:
    pol = sub.add_parser("policy", help="inspect the speculation policy")
    verbs = pol.add_subparsers(dest="verb", required=True)
    e = verbs.add_parser("explain", help="chosen k and predicted goodput per batch size")
    e.add_argument("--cost-model", default="default", help="preset name, 'default', or a JSON coefficients file")
    e.add_argument("--fit", default=None, metavar="STEPS.jsonl",
                   help="fit the cost model from step records (generate --steps-jsonl) instead")
    e.add_argument("--acceptance", default="0.7",
                   help="one conditional acceptance rate, or a comma list per draft position")
    e.add_argument("--batch-sizes", default="1,8,32,128,256")
    e.add_argument("--context", type=int, default=1000, help="context tokens per request")
    e.add_argument("--max-k", type=int, default=7)
    e.add_argument("--hysteresis", type=float, default=1.1)
    e.add_argument("--per-k", action="store_true", help="also print goodput at every uniform k")
    e.add_argument("--save", default=None, metavar="FILE.json",
                   help="write the cost model used (e.g. the --fit result) for `generate --cost-model FILE.json`")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=explain)
    s = verbs.add_parser("show", help="the policy in force (published by the controller) and its age")
    s.add_argument("--service", default=None, help="service name (default: the one `smartspec up` started)")
    s.add_argument("--redis-url", default=None, help="redis://host:port (default: the one `smartspec up` started)")
    s.add_argument("--redis-password-file", default=None, help="file holding the Redis password")
    s.add_argument("--redis-tls-dir", default=None, help="for rediss://: dir with ca.crt (and tls.crt/tls.key)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=show)


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidRequest(f"{what}: expected numbers separated by commas, got {text!r}") from None


def _model(args: argparse.Namespace) -> CostModel:
    if args.fit is None:
        return load_cost_model(args.cost_model)
    try:
        # Steps that only prefilled verified nothing; the scheduler leaves them out of its fits too.
        samples = [r.sample for r in read_jsonl(args.fit) if r.batch_size > 0]
    except (OSError, BadRecord) as exc:
        raise InvalidRequest(f"cannot read step records from {args.fit}: {exc}", param="fit") from None
    if len(samples) < 4:
        raise InvalidRequest(f"{args.fit} has {len(samples)} step records; a fit needs at least 4", param="fit")
    return fit_cost_model(samples, name=f"fit:{Path(args.fit).name}")


def explain_rows(model: CostModel, conditional: list[float], batch_sizes: list[int], context: int,
                 max_k: int, hysteresis: float) -> list[dict[str, Any]]:
    curve = np.cumprod(np.clip(np.array(conditional + [conditional[-1]] * max_k)[:max_k], 0.0, 1.0))
    rows = []
    for b in batch_sizes:
        surv = np.tile(curve, (b, 1))
        sel = select_goodput(surv, np.full(b, max_k), model, context_tokens=context * b, hysteresis=hysteresis)
        per_k = [goodput(surv, np.full(b, k), model, context_tokens=context * b) for k in range(max_k + 1)]
        rows.append({
            "batch_size": b,
            "k": sorted(Counter(int(k) for k in sel.ks).items()),  # [[k, how many requests], ...]
            "goodput": sel.goodput,
            "goodput_k0": sel.goodput_k0,
            "gain": sel.goodput / sel.goodput_k0 if sel.goodput_k0 else None,
            "step_ms": 1000 * sel.step_s,
            "goodput_per_k": per_k,
        })
    return rows


def explain(args: argparse.Namespace) -> int:
    conditional = _floats(args.acceptance, "--acceptance")
    if not conditional or any(not 0.0 <= a <= 1.0 for a in conditional):
        raise InvalidRequest("--acceptance rates must lie in [0, 1]", param="acceptance")
    sizes = [int(b) for b in _floats(args.batch_sizes, "--batch-sizes")]
    if not sizes or min(sizes) < 1:
        raise InvalidRequest("--batch-sizes must be integers >= 1", param="batch_sizes")
    if not within(args.max_k, MAX_K_LIMIT) or args.hysteresis < 1.0 or args.context < 0:
        raise InvalidRequest(f"need 0 <= --max-k <= {MAX_K_LIMIT}, --hysteresis >= 1 and --context >= 0")
    model = _model(args)
    if args.save:
        Path(args.save).write_text(json.dumps(model.to_dict(), indent=2) + "\n")
    rows = explain_rows(model, conditional, sizes, args.context, args.max_k, args.hysteresis)
    if args.json:
        print(json.dumps({"cost_model": model.to_dict(), "acceptance": conditional, "context": args.context,
                          "max_k": args.max_k, "hysteresis": args.hysteresis, "rows": rows}, indent=2))
        return 0
    r2 = "" if model.r2 is None else f", R² {model.r2:.3f} on {model.samples} steps"
    print(f"cost model {model.name}{r2}; acceptance {args.acceptance} per position; {args.context} context "
          f"tokens/request; K={args.max_k}; hysteresis {args.hysteresis}")
    head = "| batch | chosen k | goodput tok/s | k=0 tok/s | gain | step ms |"
    sep = "|---|---|---|---|---|---|"
    if args.per_k:
        head += "".join(f" k={k} |" for k in range(args.max_k + 1))
        sep += "---|" * (args.max_k + 1)
    print(head)
    print(sep)
    for r in rows:
        ks = ", ".join(f"{k}" if n == r["batch_size"] else f"{k}×{n}" for k, n in r["k"])
        line = (f"| {r['batch_size']} | {ks} | {r['goodput']:.0f} | {r['goodput_k0']:.0f} | {r['gain']:.2f}x "
                f"| {r['step_ms']:.2f} |")
        if args.per_k:
            line += "".join(f" {g:.0f} |" for g in r["goodput_per_k"])
        print(line)
    return 0


def show(args: argparse.Namespace) -> int:
    from smartspec.cli.policy_show import show_policy

    return show_policy(args.service, args.redis_url, args.json, password_file=args.redis_password_file,
                       tls_dir=args.redis_tls_dir)
