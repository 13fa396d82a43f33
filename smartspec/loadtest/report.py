"""The load sweep's results README: the setup, the pass/fail ratios with 95 % intervals, latency tables, files."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from typing import TYPE_CHECKING, Any

from smartspec.sim import compare, report

if TYPE_CHECKING:
    from smartspec.loadtest.sweep import Sweep

COMPARE_COLUMNS = ["adaptive", "static", "selected", "ratio", "lo95", "hi95", "n", "ratio_of_means", "pass"]
SUMMARY_COLUMNS = ["policy", "rate", "traces", "requests", "errors", "mean_s", "ci95_s", "p50_s", "p99_s",
                   "ttft_mean_s", "itl_mean_s", "tokens_per_s", "acceptance", "mean_k", "mean_batch", "wall_s"]


def machine() -> str:
    """The machine, as bench.common.machine() says it, without importing torch in this process."""
    cpu = report.cpu_name()
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "not installed"
    return (f"{cpu}; torch {torch}; python {platform.python_version()}; "
            f"{platform.system()} {platform.release()}; {os.cpu_count()} logical CPUs")


def models_text(models: str) -> str:
    if models == "real":
        from smartspec.models.registry import PAIR

        return (f"target {PAIR['target'].name} ({PAIR['target'].description}); "
                f"draft {PAIR['draft'].name} ({PAIR['draft'].description})")
    return ("tiny random-init Qwen2-architecture pair (`smartspec up --models tiny`, seed 0; "
            "draft = the target's first layers)")


def _load_text(sw: Sweep) -> str:
    c = sw.cfg
    if c.duration_s is None:
        per_point = f"{c.requests} requests per point"
    else:
        per_point = f"arrivals during {c.duration_s:g} s per point" + (
            f", at least {c.requests} requests" if c.requests else "")
    arrivals_text = "Poisson" if c.cv == 1 else f"gamma inter-arrivals, CV {c.cv:g}"
    parts = []
    if c.closed_loop:
        parts.append(f"Closed loop: {c.closed_loop} requests one at a time (the next is sent when the previous "
                     "finished), the same prompts in the same order for every policy"
                     + (", interleaved: request i went to every policy, in a random order drawn per round, before "
                        "request i + 1 went to any (the closed-loop `wall_s` is the time the policy was serving)."
                        if c.interleave else "."))
    if c.rates:
        traces = (f"{c.traces} independent arrival traces per rate (trace r seeded by seed, rate and r, prompts "
                  "drawn per trace too), every policy on the same traces" if c.traces > 1 else
                  "one arrival trace per rate, the same arrival times and prompts for every policy")
        parts.append(f"Open loop: {arrivals_text}, {per_point}; {traces}; rates "
                     f"{', '.join(f'{r:g}' for r in c.rates)} req/s.")
    parts.append(f"Seed {c.seed}; {c.warmup} warm-up requests after each stack start.")
    return " ".join(parts)


def _comparison_section(sw: Sweep) -> list[str]:
    rows = sw.comparisons()
    if not rows:
        return []
    closed = [r for r in rows if r["point"] == "closed loop"]
    dynamic = [r for r in rows if r["point"] == "dynamic trace"]
    loaded = [r for r in rows if r["point"] not in ("closed loop", "dynamic trace")]
    lines = ["## Adaptive vs static: ratios with 95 % intervals (ratios.csv)", "",
             f"`ratio` < 1 means the adaptive policy is faster. `pass` = point ≤ {compare.PASS_POINT:.2f} and "
             f"upper bound `hi95` < {compare.PASS_UPPER:.2f}; `–` where there is no interval (n < 2).", ""]
    if closed:
        lines += ["### Closed loop (light load), paired per request", "",
                  "Statistic: the geometric mean over the n requests served by both policies of latency_adaptive / "
                  "latency_static (the same prompt, each served alone), with the Student-t 95 % interval of the mean "
                  "log ratio (n − 1 d.o.f.), exponentiated; `ratio_of_means` = mean latency / mean latency over the "
                  "same requests. `best static` is the static policy with the lowest mean on these same requests "
                  "(chosen in hindsight, so biased in the static's favour); `best static (cross-fit)` compares the "
                  "even-numbered requests with the static that was best on the odd ones and vice versa, so the "
                  "choice never sees the requests it is judged on.", "", report.markdown(closed, COMPARE_COLUMNS)]
    if loaded:
        if sw.cfg.traces > 1:
            choice = ("`best static` is chosen on separate traces: for each trace t, the static policy with the "
                      "lowest mean over the other traces (leave-one-out), compared on t; `selected` counts the "
                      "choices.")
        else:
            choice = ("**With one trace per rate there is no interval, and `best static` was chosen in hindsight on "
                      "the same trace** (the minimum of several noisy means is biased low, so this ratio is biased "
                      "against the adaptive policy); run `--traces R` (R ≥ 2) for intervals and a separate choice.")
        lines += ["### Loaded points (open loop), over arrival traces", "",
                  "Statistic: for each arrival trace t, x_t = log(mean latency of the adaptive policy on t / mean "
                  "latency of the static policy on t); `ratio` = exp(mean x_t) with the Student-t 95 % interval over "
                  "traces (R − 1 d.o.f.; n = traces), since requests of one trace queue behind each other and only "
                  "traces are independent. `ratio_of_means` pools every trace's requests. " + choice, "",
                  report.markdown(loaded, ["rate", *COMPARE_COLUMNS])]
    if dynamic:
        lines += ["### Dynamic trace (all phases together), over its draws", "",
                  "Statistic: as for a loaded point, with each draw of the dynamic trace (its own arrival times and "
                  "prompts, the same for every policy) as one trace: x_t = log(mean latency of the adaptive policy "
                  "over the whole of draw t / that of the static policy); `best static` is one static policy for "
                  "the whole trace, " + ("chosen on the other draws (leave-one-out)." if sw.cfg.traces > 1 else
                                        "chosen in hindsight on the same draw (run `--traces R`, R ≥ 2, for an "
                                        "interval and a separate choice)."), "",
                  report.markdown(dynamic, COMPARE_COLUMNS)]
    return lines


def _latency_sections(sw: Sweep) -> list[str]:
    lines: list[str] = []
    if sw.closed_records:
        cols = [c for c in SUMMARY_COLUMNS if c not in ("rate", "traces")]
        lines += ["## Closed-loop latency per policy", "",
                  "Seconds; one request at a time, so `mean_batch` ≈ 1.", "",
                  report.markdown(sw.closed_summary(), cols)]
    if sw.records:
        lines += ["## Latency per policy and rate", "",
                  "Seconds, every trace's requests pooled; `ci95_s` treats requests as independent (they are not "
                  "under load: the ratios above are the statistic to judge by); `tokens_per_s` = output tokens over "
                  "the point's span; `mean_k` = Σk / Σ running requests over the target's decode steps during the "
                  "point; `wall_s` = how long the point ran (all traces).", "",
                  report.markdown(sw.summary(), SUMMARY_COLUMNS)]
    for adaptive, rows in sw.mean_tables().items():
        lines += [f"## {adaptive} vs the static policies: mean latency per rate", "",
                  f"Mean latency (s) per policy, traces pooled; `best_static` is the best of off/fixed:k at that rate "
                  f"(chosen in hindsight); `vs_best_static` = {adaptive} / best static; `speedup_vs_off` = off / "
                  f"{adaptive}. No intervals: see the ratios above.", "", report.markdown(rows)]
    sources = compare.source_means([*sw.closed_records, *sw.records])
    if len({r["source"] for r in sources}) > 1:
        lines += ["## Mean latency per prompt source", "",
                  "The mixed workload's two halves apart (records.csv `workload`).", "",
                  report.markdown(sources)]
    return lines


def write_readme(sw: Sweep) -> None:
    from smartspec.loadtest import plots

    c, out = sw.cfg, sw.cfg.out
    figures = plots.write_all(sw, out)
    labels = sw.labels()
    lines = [f"# Load sweep: {sw.workload.name}, {c.models} pair, {len(labels)} policies", ""]
    if c.emulate_acceptance is not None:
        lines += [
            f"> # ⚠ ACCEPTANCE EMULATED (α = {c.emulate_acceptance})",
            f"> **The target accepted each draft token with probability α = {c.emulate_acceptance} instead of "
            "comparing it with its own choice** (`SMARTSPEC_TARGET_EMULATE_ACCEPTANCE`). Outputs are NOT the "
            "target's; latencies show what acceptance α would give with this pair's costs. Every record has "
            "`acceptance_emulated=True`.", ""]
    lines += [
        *([f"Command: `{sw.commands[0]}`"] if len(sw.commands) == 1 else
          ["Commands (one per resumed run):", "", *(f"- `{cmd}`" for cmd in sw.commands)]), "",
        f"Machine: {machine()}", "",
        f"Models: {models_text(c.models)}{f'; served as `{sw.served_model}`' if sw.served_model else ''}; "
        f"dtype {c.dtype}; max batch {c.max_batch_size}; draft method {c.draft_method}.", "",
        f"Workload: {sw.workload.name} — {sw.workload.source}; chat completions, streamed, temperature 0, "
        f"{sw.max_tokens} output tokens per request (ignore_eos).", "",
        f"Load: {_load_text(sw)}", "",
        f"Policies: {', '.join(labels)}; controller "
        f"{'on' if c.controller else 'off (targets use their local policy)'}"
        f"{'; `+controller` labels run with the controller' if any('+' in p for p in labels) else ''}."
        + (" Interleaved (`--interleave`): every policy's stack was up for the whole run, idle except while "
           "serving its own requests; each round of the closed loop, each (rate, trace) and the dynamic trace went "
           "to every policy in turn (a random order per round), so the two sides of a ratio ran minutes apart on "
           "the same machine." if c.interleave else " The stack is restarted for every policy."), "",
    ]
    lines += _comparison_section(sw)
    lines += _latency_sections(sw)
    if sw.trace_records:
        lines += ["## Dynamic trace", "",
                  f"Phases: `{c.trace_text}` ({', '.join(p.describe() for p in c.trace or ())}).", "",
                  report.markdown(sw.trace_summary(), ["phase", "policy", "rate", "requests", "errors", "mean_s",
                                                       "p99_s", "tokens_per_s", "acceptance"])]
    if figures:
        lines += ["## Plots", ""] + [f"![{name}]({name})" for name in figures] + [""]
    lines += _files_section(sw)
    (out / "README.md").write_text("\n".join(lines))


def _files_section(sw: Sweep) -> list[str]:
    files: list[Any] = [
        "- `records.csv`: one row per open-loop request (smartspec/sim/report.py RequestRecord; `arrival_s` from the "
        "point's start, latencies in seconds, drafted/accepted from the server's usage, `trace` = which arrival "
        "trace, `seq` = the request's index in its point, `workload` = the prompt's source)",
        *(["- `closed_records.csv`: the closed-loop requests (same columns; `seq` pairs them across policies)"]
          if sw.closed_records else []),
        "- `points.csv`: per policy, rate and trace (and closed loop): requests, wall time, mean k, mean batch",
        "- `ratios.csv`: the adaptive-vs-static ratios with 95 % intervals; `summary.csv`, `means.csv`: the latency "
        "tables",
        "- `steps.csv`: every target step read from Redis (`t_s` from the policy's stack start; `window` = the point "
        "it fell in, or `warmup`, `idle`, `calibration` = the target's start-up profile; `mean_k` = Σk / running "
        "requests); `steps-<policy>.jsonl`: the raw records (`smartspec sim fit`)",
        *(["- `trace_records.csv`, `trace_summary.csv`: the dynamic trace"] if sw.trace_records else []),
        "",
    ]
    return ["## Files", "", *files]
