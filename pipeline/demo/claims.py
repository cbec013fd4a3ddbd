"""What the demo claims about its adapter, computed from the run's metrics and side-by-side table.

The claims (issue 14): held-out task loss at least 40% below the base's; ROUGE-L of the adapter at
least 0.4 and twice the base's; at least half of the held-out fact questions (fares, times) answered
with the right fact; the base clearly above chance on the general suite. Each is printed with its
verdict and logged to the MLflow run under `demo/`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.demo.sample_data import fact_answered
from pipeline.evaluate.general_suite import load_general_suite


def chance_accuracy(suite_dir: str | None = None) -> float:
    """Expected accuracy of guessing on a general suite's multiple-choice items (None: the built-in suite; the
    demo's config names its own, `eval.general_suite`)."""
    items = load_general_suite(suite_dir).mc_items
    return sum(1 / len(i.choices) for i in items) / len(items)


def demo_metrics(
    metrics: dict[str, float], table: Sequence[dict[str, Any]], suite_dir: str | None = None
) -> dict[str, float]:
    """The claim figures (`demo/...`) from the run's metrics, its side-by-side rows and the general suite it was
    checked on (`suite_dir`, the config's `eval.general_suite`)."""
    checked = [
        (fact_answered(r["prompt"], r["base_output"]), fact_answered(r["prompt"], r["adapter_output"])) for r in table
    ]
    facts = [c for c in checked if c[0] is not None]
    base_loss, adapter_loss = metrics["task_loss_base"], metrics["task_loss_adapter"]
    rouge_base, rouge_adapter = metrics["task_rouge_l_base"], metrics["task_rouge_l_adapter"]
    return {
        "demo/task_loss_reduction": 1 - adapter_loss / base_loss,
        "demo/rouge_l_ratio": rouge_adapter / rouge_base if rouge_base > 0 else float("inf"),
        "demo/fact_questions": float(len(facts)),
        "demo/fact_accuracy_base": sum(b for b, _ in facts) / len(facts) if facts else float("nan"),
        "demo/fact_accuracy_adapter": sum(a for _, a in facts) / len(facts) if facts else float("nan"),
        "demo/general_mc_chance": chance_accuracy(suite_dir),
    }


def claim_lines(metrics: dict[str, float], demo: dict[str, float]) -> list[str]:
    """One line per claim: PASS/MISS, the figures and the bar."""

    def line(ok: bool, text: str) -> str:
        return f"  [{'PASS' if ok else 'MISS'}] {text}"

    base_loss, adapter_loss = metrics["task_loss_base"], metrics["task_loss_adapter"]
    rb, ra = metrics["task_rouge_l_base"], metrics["task_rouge_l_adapter"]
    fb, fa, n = demo["demo/fact_accuracy_base"], demo["demo/fact_accuracy_adapter"], int(demo["demo/fact_questions"])
    acc, chance = metrics.get("forgetting_mc_acc_base", float("nan")), demo["demo/general_mc_chance"]
    return [
        line(
            demo["demo/task_loss_reduction"] >= 0.4,
            f"held-out task loss {base_loss:.2f} -> {adapter_loss:.2f} nats/token "
            f"({demo['demo/task_loss_reduction']:.0%} lower; bar: 40%)",
        ),
        line(
            ra >= 0.4 and ra >= 2 * rb, f"ROUGE-L on the held-out set {rb:.3f} -> {ra:.3f} (bar: >= 0.4 and >= 2x base)"
        ),
        line(
            n > 0 and fa >= 0.5,
            f"held-out fare/time questions answered with the right fact: base {fb:.0%}, adapter {fa:.0%} "
            f"of {n} (bar: half)",
        ),
        line(
            acc >= chance + 0.25,
            f"general suite (forgetting check): base accuracy {acc:.0%}, chance {chance:.0%}; "
            f"adapter {metrics.get('forgetting_mc_acc_adapter', float('nan')):.0%}",
        ),
    ]


def side_by_side_lines(table: Sequence[dict[str, Any]], k: int = 3, width: int = 100) -> list[str]:
    """`k` held-out questions with the reference, the base's and the adapter's answers (fact questions first)."""
    rows = sorted(table, key=lambda r: fact_answered(r["prompt"], r["reference"]) is None)[:k]
    out: list[str] = []
    for r in rows:
        out.append(f"  Q: {r['prompt']}")
        for label, key in (("reference", "reference"), ("base", "base_output"), ("adapter", "adapter_output")):
            text = str(r[key]).replace("\n", " ")
            out.append(f"    {label:>9}: {text if len(text) <= width else text[: width - 3] + '...'}")
    return out
