"""The rank sweep's trade-off: one point per child config, the rule that recommends one, the table and the plot.

Plain data in, files out: `pipeline/track/sweep.py` builds the points from each child's assessment and logs
what this module writes (trade-off table as Markdown, CSV and JSON; the Pareto plot) to the parent run.

The recommendation rule (RULE, also in docs/sweep.md): among the children that finished, improve the held-out
loss (gain > 0) and pass every forgetting rule of the gate, keep those whose task gain is at least the lower
bound of the best child's gain interval (statistically no worse than the best), and pick the smallest adapter
(bytes on disk; then fewer trainable parameters, then the shorter training). None qualifies: none is recommended.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import matplotlib

matplotlib.use("Agg")  # headless: workers and CI have no display
import matplotlib.pyplot as plt

RULE = (
    "Among the children that finished, improve the held-out loss (task gain > 0) and pass every forgetting rule, "
    "those whose task gain is at least the lower bound of the best child's gain interval; of these, the smallest "
    "adapter (bytes, then trainable parameters, then train time)."
)

ChildStatus = Literal["FINISHED", "FAILED"]


@dataclass(frozen=True)
class SweepPoint:
    """One child config and what its training and assessment measured (nan/0 where a failed child has nothing).

    task_gain: held-out loss improvement, base - adapter (nats/token), with its paired bootstrap interval.
    forgetting: per general task, adapter - base accuracy in points or the relative perplexity change.
    forgetting_budget_used: worst share of a forgetting budget at the point estimate (1.0 = at the budget).
    """

    label: str
    run_id: str
    rank: int
    alpha: float
    learning_rate: float
    targets: str
    status: ChildStatus
    error: str = ""
    task_gain: float = math.nan
    task_gain_low: float = math.nan
    task_gain_high: float = math.nan
    rouge_l_delta: float = math.nan
    forgetting: dict[str, float] = field(default_factory=dict)
    forgetting_budget_used: float = math.nan
    forgetting_passed: bool = False
    gate_passed: bool = False
    adapter_bytes: int = 0
    trainable_params: int = 0
    train_wall_time_s: float = math.nan

    def to_json_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json_dict(cls, data: dict[str, object]) -> SweepPoint:
        return cls(**data)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Recommendation:
    """The recommended point (None: no child qualifies) and why, in a sentence a reviewer reads."""

    point: SweepPoint | None
    reason: str


def _size_key(p: SweepPoint) -> tuple[int, int, float]:
    return (p.adapter_bytes, p.trainable_params, p.train_wall_time_s)


def recommend(points: list[SweepPoint]) -> Recommendation:
    """Apply RULE to the sweep's points."""
    finished = [p for p in points if p.status == "FINISHED" and math.isfinite(p.task_gain)]
    if not finished:
        return Recommendation(None, "no child finished, so none is recommended")
    best = max(finished, key=lambda p: p.task_gain)
    floor = best.task_gain_low if math.isfinite(best.task_gain_low) else best.task_gain
    eligible = [p for p in finished if p.forgetting_passed and p.task_gain > 0 and p.task_gain >= floor]
    if not eligible:
        passing = [p.label for p in finished if p.forgetting_passed]
        why = (
            f"no child qualifies: the best task gain is {best.task_gain:+.4f} ({best.label}, interval lower bound "
            f"{floor:+.4f}); children passing the forgetting rules: {', '.join(passing) or 'none'}"
        )
        return Recommendation(None, why)
    pick = min(eligible, key=_size_key)
    reason = (
        f"{pick.label}: the smallest adapter ({human_bytes(pick.adapter_bytes)}) of {len(eligible)} qualifying "
        f"(task gain {pick.task_gain:+.4f} >= {floor:+.4f}, the lower bound of the best gain, {best.label} "
        f"{best.task_gain:+.4f}; forgetting rules pass)"
    )
    return Recommendation(pick, reason)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _num(x: float, fmt: str = "+.4f") -> str:
    return format(x, fmt) if math.isfinite(x) else "n/a"


def table_rows(points: list[SweepPoint], recommended: SweepPoint | None) -> list[dict[str, object]]:
    """One flat row per child (CSV / JSON / MLflow table): every measured quantity, forgetting per task."""
    tasks = sorted({t for p in points for t in p.forgetting})
    rows = []
    for p in points:
        row: dict[str, object] = {
            "config": p.label,
            "status": p.status,
            "recommended": recommended is not None and p.run_id == recommended.run_id,
            "rank": p.rank,
            "alpha": p.alpha,
            "learning_rate": p.learning_rate,
            "targets": p.targets,
            "task_gain": p.task_gain,
            "task_gain_low": p.task_gain_low,
            "task_gain_high": p.task_gain_high,
            "rouge_l_delta": p.rouge_l_delta,
            **{f"forgetting_{t}": p.forgetting.get(t, math.nan) for t in tasks},
            "forgetting_budget_used": p.forgetting_budget_used,
            "forgetting_passed": p.forgetting_passed,
            "gate_passed": p.gate_passed,
            "adapter_bytes": p.adapter_bytes,
            "trainable_params": p.trainable_params,
            "train_wall_time_s": p.train_wall_time_s,
            "run_id": p.run_id,
            "error": p.error,
        }
        rows.append(row)
    return rows


def markdown_table(points: list[SweepPoint], recommendation: Recommendation) -> str:
    """The trade-off table a reviewer reads on the parent run, with the rule and the recommendation under it."""
    rec = recommendation.point
    tasks = sorted({t for p in points for t in p.forgetting})
    head = ["config", "status", "task gain [interval]", "ROUGE-L Δ", *[f"forgetting {t}" for t in tasks]]
    head += ["forgetting rules", "adapter", "trainable params", "train s", "recommended"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in points:
        if p.status == "FAILED":
            cells = [p.label, f"**FAILED**: {p.error[:120]}", *[""] * (len(head) - 2)]
        else:
            cells = [
                p.label,
                p.status,
                f"{_num(p.task_gain)} [{_num(p.task_gain_low)}, {_num(p.task_gain_high)}]",
                _num(p.rouge_l_delta),
                *[_forgetting_text(t, p.forgetting.get(t, math.nan)) for t in tasks],
                "pass" if p.forgetting_passed else "**FAIL**",
                human_bytes(p.adapter_bytes),
                f"{p.trainable_params:,}",
                _num(p.train_wall_time_s, ".1f"),
                "**yes**" if rec is not None and p.run_id == rec.run_id else "",
            ]
        lines.append("| " + " | ".join(c.replace("|", "/").replace("\n", " ") for c in cells) + " |")
    lines += [
        "",
        "Task gain: held-out loss, base - adapter (nats/token), paired bootstrap interval. Forgetting: accuracy "
        "delta in points (`_mc` tasks) or relative perplexity change (`_ppl` tasks), adapter vs base.",
        "",
        f"Rule: {RULE}",
        "",
        f"Recommended: {recommendation.reason}",
    ]
    return "\n".join(lines) + "\n"


def _forgetting_text(task: str, value: float) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:+.1%}" if "ppl" in task else f"{value:+.2f} pts"


def write_csv(rows: list[dict[str, object]], path: str | Path) -> Path:
    p = Path(path)
    with p.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["config"])
        writer.writeheader()
        writer.writerows(rows)
    return p


def pareto_front(points: list[SweepPoint]) -> list[SweepPoint]:
    """Finished points no other finished point beats on task gain, forgetting budget and adapter size at once."""
    done = [p for p in points if p.status == "FINISHED" and math.isfinite(p.task_gain)]

    def dominates(a: SweepPoint, b: SweepPoint) -> bool:
        ka = (-a.task_gain, a.forgetting_budget_used, a.adapter_bytes)
        kb = (-b.task_gain, b.forgetting_budget_used, b.adapter_bytes)
        return all(x <= y for x, y in zip(ka, kb, strict=True)) and ka != kb

    return [p for p in done if not any(dominates(q, p) for q in done if q is not p)]


def pareto_plot(points: list[SweepPoint], recommended: SweepPoint | None, path: str | Path) -> Path:
    """Task gain vs forgetting budget used; marker area grows with adapter size; each point says its train time.
    Hollow markers failed a forgetting rule; the recommended config is ringed; failed children are listed."""
    done = [p for p in points if p.status == "FINISHED" and math.isfinite(p.task_gain)]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    largest = max((p.adapter_bytes for p in done), default=1) or 1
    front = {p.run_id for p in pareto_front(points)}
    for p in done:
        size = 60 + 540 * p.adapter_bytes / largest
        x = p.forgetting_budget_used if math.isfinite(p.forgetting_budget_used) else 0.0
        face = "tab:blue" if p.forgetting_passed else "none"
        ax.scatter([x], [p.task_gain], s=size, facecolors=face, edgecolors="tab:blue", alpha=0.7, linewidths=1.5)
        if math.isfinite(p.task_gain_low) and math.isfinite(p.task_gain_high):
            ax.errorbar(
                [x],
                [p.task_gain],
                yerr=[[p.task_gain - p.task_gain_low], [p.task_gain_high - p.task_gain]],
                fmt="none",
                ecolor="tab:gray",
                lw=0.8,
            )
        mark = " *" if p.run_id in front else ""
        ax.annotate(
            f"{p.label}{mark}\n{human_bytes(p.adapter_bytes)}, {_seconds(p.train_wall_time_s)} train",
            (x, p.task_gain),
            textcoords="offset points",
            xytext=(8, 6),
            fontsize=7,
        )
    if recommended is not None and recommended.status == "FINISHED":
        x = recommended.forgetting_budget_used if math.isfinite(recommended.forgetting_budget_used) else 0.0
        ax.scatter([x], [recommended.task_gain], s=900, facecolors="none", edgecolors="tab:green", linewidths=2.5)
    ax.axvline(1.0, color="tab:red", ls="--", lw=1, label="forgetting budget")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xlabel("forgetting: worst share of a forgetting budget used (point estimate)")
    ax.set_ylabel("task gain: held-out loss base - adapter (nats/token)")
    title = "Rank sweep: task gain vs forgetting (area = adapter size, * = Pareto front, ring = recommended)"
    ax.set_title(title, fontsize=9)
    failed = [p.label for p in points if p.status == "FAILED"]
    if failed:
        ax.text(0.01, 0.01, f"failed: {', '.join(failed)}", transform=ax.transAxes, fontsize=7, color="tab:red")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _seconds(s: float) -> str:
    return "n/a" if not math.isfinite(s) else f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


def write_report(points: list[SweepPoint], out_dir: str | Path) -> tuple[Path, Recommendation]:
    """tradeoff.md, tradeoff.csv, tradeoff.json and pareto.png in `out_dir`; returns it and the recommendation."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rec = recommend(points)
    rows = table_rows(points, rec.point)
    (out / "tradeoff.md").write_text("# Rank sweep\n\n" + markdown_table(points, rec))
    write_csv(rows, out / "tradeoff.csv")
    payload = {"rule": RULE, "recommended": rec.point.label if rec.point else None, "reason": rec.reason}
    (out / "tradeoff.json").write_text(json.dumps({**payload, "rows": json_rows(rows)}, indent=2))
    pareto_plot(points, rec.point, out / "pareto.png")
    return out, rec


def json_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """The rows with nan as None (JSON has no nan; MLflow tables and tradeoff.json are JSON)."""
    return [{k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in r.items()} for r in rows]
