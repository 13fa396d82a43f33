"""Plots of a load sweep (matplotlib, no display): latency and throughput vs rate, chosen k over time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartspec.sim.report import is_adaptive

if TYPE_CHECKING:
    from smartspec.loadtest.sweep import Sweep


def _style(policy: str) -> dict[str, Any]:
    """The same colour for a policy in every plot: off black, goodput red, fixed k a blue-green ramp by k."""
    if is_adaptive(policy):
        base = policy.partition("+")[0]
        colour = "tab:red" if base == "goodput" else "tab:orange" if base == "goodput-uniform" else "tab:purple"
        return {"linewidth": 2.5, "marker": "o", "zorder": 5, "color": colour,
                "linestyle": "--" if "+" in policy else "-"}
    if policy == "off":
        return {"linewidth": 1.8, "marker": "s", "color": "black"}
    style: dict[str, Any] = {"linewidth": 1.2, "marker": ".", "alpha": 0.9}
    if policy.startswith("fixed:") and policy[6:].isdigit():
        import matplotlib

        style["color"] = matplotlib.colormaps["viridis"](min(int(policy[6:]), 8) / 9)
    return style


def _log_x(ax: Any, rates: Sequence[float]) -> None:
    if rates and min(rates) > 0 and max(rates) / min(rates) >= 5:
        ax.set_xscale("log")
        ax.set_xticks(list(rates))
        ax.set_xticklabels([f"{r:g}" for r in rates])
        ax.minorticks_off()


def _by_policy(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(str(r["policy"]), []).append(r)
    for rs in out.values():
        rs.sort(key=lambda r: float(r["rate"]))
    return out


def _finite(xs: Sequence[float]) -> list[float]:
    return [x if isinstance(x, float | int) and math.isfinite(x) else math.nan for x in xs]


def _save_rate_panels(fig: Any, axes: Any, ylabels: Sequence[str], rates: Sequence[float], out: Path, name: str,
                      title: str) -> str:
    """Label a row of per-rate panels alike (rate on a log x axis), save the figure as `name`; returns the name."""
    import matplotlib.pyplot as plt

    for ax, what in zip(axes, ylabels, strict=True):
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(what)
        ax.grid(True, alpha=0.3)
        _log_x(ax, rates)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    return name


def write_all(sweep: Sweep, out: Path) -> list[str]:
    """Write every plot the sweep has data for; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names: list[str] = []
    rows = sweep.summary()
    rates = sorted({float(r["rate"]) for r in rows})
    title = f"{sweep.workload.name}, {sweep.cfg.models} pair, {sweep.max_tokens} tokens/request"
    if sweep.cfg.emulate_acceptance is not None:
        title += f" — ACCEPTANCE EMULATED α={sweep.cfg.emulate_acceptance:g}"
    policies = _by_policy(rows)

    if rows:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
        for policy, rs in policies.items():
            x = [float(r["rate"]) for r in rs]
            axes[0].errorbar(x, _finite([r["mean_s"] for r in rs]), yerr=_finite([r["ci95_s"] for r in rs]),
                             label=policy, capsize=3, **_style(policy))
            axes[1].plot(x, _finite([r["p99_s"] for r in rs]), label=policy, **_style(policy))
        names.append(_save_rate_panels(fig, axes, ("mean latency (s), 95% CI", "p99 latency (s)"), rates, out,
                                       "latency_vs_rate.png", f"End-to-end latency vs rate — {title}"))

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
        for policy, rs in policies.items():
            x = [float(r["rate"]) for r in rs]
            axes[0].plot(x, _finite([r["tokens_per_s"] for r in rs]), label=policy, **_style(policy))
            axes[1].plot(x, _finite([r["mean_k"] for r in rs]), label=policy, **_style(policy))
        names.append(_save_rate_panels(fig, axes, ("output tokens/s", "mean k per running request (target steps)"),
                                       rates, out, "throughput_vs_rate.png",
                                       f"Throughput and chosen k vs rate — {title}"))

    adaptive = list(dict.fromkeys(s["policy"] for s in sweep.steps if is_adaptive(s["policy"])))
    if adaptive:
        fig, axes = plt.subplots(len(adaptive), 1, figsize=(12, 3.6 * len(adaptive)), squeeze=False)
        for ax, policy in zip(axes[:, 0], adaptive, strict=True):
            steps = [s for s in sweep.steps if s["policy"] == policy and s["window"] not in ("warmup", "calibration")]
            _k_panel(ax, steps, [p for p in sweep.points if p.policy == policy], sweep.steps, policy)
        fig.suptitle(f"k chosen over time — {title}", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "k_over_time.png", dpi=110)
        plt.close(fig)
        names.append("k_over_time.png")

    if sweep.trace_records:
        fig, axes = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True)
        for policy in dict.fromkeys(r.policy for r in sweep.trace_records):
            # The first draw only: the draws' clocks each start at 0, and one run reads better than an average.
            done = sorted((r for r in sweep.trace_records
                           if r.policy == policy and r.e2e_s is not None and r.trace == 0), key=lambda r: r.arrival_s)
            x = [r.arrival_s for r in done]
            y = [float(r.e2e_s or 0.0) for r in done]
            w = max(1, len(done) // 20)
            smooth = [sum(y[max(0, i - w + 1): i + 1]) / len(y[max(0, i - w + 1): i + 1]) for i in range(len(y))]
            axes[0].plot(x, smooth, label=policy, **{**_style(policy), "marker": None})
            trace_pts = [p for p in sweep.points if p.policy == policy and p.kind == "trace" and p.trace == 0]
            if trace_pts and is_adaptive(policy):
                t0 = trace_pts[0].start_unix
                st = [{**s, "t_s": s["ts"] - t0} for s in sweep.steps
                      if s["policy"] == policy and t0 <= s["ts"] <= trace_pts[0].end_unix + 0.5]
                t, k, _ = binned(st, width=_bin_width(st))
                axes[1].plot(t, k, label=f"{policy}: mean k", **{**_style(policy), "marker": None})
        axes[0].set_ylabel("e2e latency (s), rolling mean of 5 % of requests")
        axes[0].legend(fontsize=8)
        axes[1].set_ylabel("mean k per running request")
        axes[1].set_xlabel("time since the trace started (s)")
        for ph_start, name in _phase_starts(sweep):
            for ax in axes:
                ax.axvline(ph_start, color="grey", linestyle=":", linewidth=1)
            axes[0].annotate(name, (ph_start, 1), xycoords=("data", "axes fraction"), fontsize=7,
                             va="top", ha="left", rotation=90)
        for ax in axes:
            ax.grid(True, alpha=0.3)
        draws = " (the first of its draws)" if sweep.cfg.traces > 1 else ""
        fig.suptitle(f"Dynamic trace `{sweep.cfg.trace_text}`{draws} — {title}", fontsize=10)
        fig.tight_layout()
        fig.savefig(out / "trace.png", dpi=110)
        plt.close(fig)
        names.append("trace.png")
    return names


def binned(steps: Sequence[dict[str, Any]], width: float) -> tuple[list[float], list[float], list[float]]:
    """Per time bin of `width` s (by `t_s`): bin centre, Σk / Σ running requests, mean running requests.

    Only decode steps (running requests > 0) count; a bin without any has k = NaN (a gap in the
    line) and 0 running requests."""
    bins: dict[int, list[dict[str, Any]]] = {}
    for s in steps:
        bins.setdefault(math.floor(float(s["t_s"]) / width), []).append(s)
    if not bins:
        return [], [], []
    t, k, batch = [], [], []
    for b in range(min(bins), max(bins) + 1):
        dec = [s for s in bins.get(b, []) if int(s["batch_size"]) > 0]
        running = sum(int(s["batch_size"]) for s in dec)
        t.append((b + 0.5) * width)
        k.append(sum(int(s["sum_k"]) for s in dec) / running if running else math.nan)
        batch.append(running / len(dec) if dec else 0.0)
    return t, k, batch


def _bin_width(steps: Sequence[dict[str, Any]]) -> float:
    if len(steps) < 2:
        return 1.0
    span = max(s["t_s"] for s in steps) - min(s["t_s"] for s in steps)
    return max(0.25, span / 150)


def _k_panel(ax: Any, steps: Sequence[dict[str, Any]], points: Sequence[Any], all_steps: Any, policy: str) -> None:
    t, k, batch = binned(steps, width=_bin_width(steps))
    dec = [s for s in steps if int(s["batch_size"]) > 0]
    ax.scatter([s["t_s"] for s in dec], [s["mean_k"] for s in dec], s=4, color="tab:blue", alpha=0.15,
               label="one step", linewidths=0)
    ax.plot(t, k, color="tab:blue", linewidth=1.8, marker=".", markersize=3, label="mean k per running request")
    ax.set_ylabel("k", color="tab:blue")
    ax.set_ylim(bottom=-0.1)
    ax.set_xlabel("time since the stack started (s)")
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(t, batch, color="tab:orange", linewidth=1.0, alpha=0.8, label="running requests")
    ax2.set_ylabel("running requests", color="tab:orange")
    t0 = min((s["ts"] - s["t_s"] for s in steps), default=0.0)
    for p in points:
        a, b = p.start_unix - t0, p.end_unix - t0
        ax.axvspan(a, b, color="grey", alpha=0.07)
        label = p.window
        ax.annotate(label, ((a + b) / 2, 0.98), xycoords=("data", "axes fraction"), fontsize=7, ha="center", va="top")
    ax.set_title(policy, fontsize=9)


def _phase_starts(sweep: Sweep) -> list[tuple[float, str]]:
    out, seen = [], set()
    for r in sorted((r for r in sweep.trace_records if r.trace == 0), key=lambda r: r.arrival_s):
        if r.phase not in seen:
            seen.add(r.phase)
            out.append((r.arrival_s, r.phase))
    return out
