"""Plots logged as MLflow artifacts: training/held-out loss curves, and base vs adapter per general task."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt

from pipeline.evaluate.forgetting import ForgettingReport
from pipeline.train.results import StepLog


def loss_curves(history: Sequence[StepLog], path: str | Path) -> Path:
    """Training loss per optimizer step, held-out loss where the recipe evaluated."""
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([h.step for h in history], [h.loss for h in history], label="train loss", lw=1.2)
    evals = [(h.step, h.eval_loss) for h in history if math.isfinite(h.eval_loss)]
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="held-out loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats / response token)")
    ax.set_title("LoRA training")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def forgetting_bars(report: ForgettingReport, path: str | Path) -> Path:
    """One panel per task: base and adapter, the adapter's bar carrying the paired interval of the delta."""
    n = len(report.comparisons)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n + 0.5, 3.8), squeeze=False)
    for ax, c in zip(axes[0], report.comparisons, strict=True):
        base, adapter, d = c.base.value, c.adapter.value, c.delta
        if c.kind == "accuracy":
            lo, hi = base + d.low, base + d.high
            ylabel = "accuracy"
        else:
            lo, hi = base * (1 + d.low), base * (1 + d.high)
            ylabel = "word perplexity, log scale (lower is better)"
            ax.set_yscale("log")  # a collapsed adapter can be 1000x the base: keep both bars visible
        ax.bar([0, 1], [base, adapter], color=["#888888", "#3a7bd5"], width=0.6)
        ax.errorbar(
            [1], [adapter], yerr=[[max(adapter - lo, 0.0)], [max(hi - adapter, 0.0)]], fmt="none", c="k", capsize=6
        )
        ax.set_xticks([0, 1], ["base", "adapter"])
        ax.set_title(c.task, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"Forgetting check ({report.comparisons[0].delta.confidence:.0%} paired bootstrap intervals)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
