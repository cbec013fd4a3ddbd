"""The promotion gate: configurable rules on interval bounds, a verdict with every rule's numbers.

Rules judge the pessimistic end of each paired interval, never the point estimate: an adapter
passes the forgetting budget only if even the bad end of the interval is within it, and it
improves on the task only if the lower bound of the improvement clears the threshold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipeline.config import GateConfig
from pipeline.evaluate.forgetting import ForgettingReport
from pipeline.evaluate.leakage import LeakageReport
from pipeline.evaluate.task_eval import TaskEvaluation


@dataclass(frozen=True)
class RuleResult:
    """One rule: the number it judged (an interval bound), the threshold, and whether it passed."""

    name: str
    passed: bool
    value: float
    threshold: float
    detail: str


# The leakage rule's name (the validation check `no_train_eval_leakage` judges one snapshot's split only).
LEAKAGE_RULE = "no_eval_leakage"
CHAMPION_RULE = "beats_champion"


def _fmt(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else "n/a"


@dataclass(frozen=True)
class GateVerdict:
    rules: list[RuleResult]
    # Why the champion could not be compared with (another base): the verdict is "not comparable", never a pass.
    not_comparable: str = ""

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rules)

    @property
    def headline(self) -> str:
        """PASSED, NOT COMPARABLE (why) or FAILED (rules): the first thing a reviewer reads."""
        if self.passed:
            return "PASSED"
        if self.not_comparable:
            return f"NOT COMPARABLE ({self.not_comparable})"
        return f"FAILED ({', '.join(self.failed_rules)})"

    @property
    def failed_rules(self) -> list[str]:
        return [r.name for r in self.rules if not r.passed]

    def metrics(self) -> dict[str, float]:
        out = {"gate_passed": float(self.passed)}
        for r in self.rules:
            out[f"gate_{r.name}_passed"] = float(r.passed)
            out[f"gate_{r.name}_value"] = r.value
            out[f"gate_{r.name}_threshold"] = r.threshold
        return out

    def markdown(self, title: str = "Promotion gate") -> str:
        lines = [
            f"# {title}: {self.headline}",
            "",
            "Each rule judges the pessimistic bound of a paired bootstrap interval, not the point estimate.",
            "",
            "| rule | result | value judged | threshold | detail |",
            "|---|---|---|---|---|",
        ]
        for r in self.rules:
            lines.append(
                f"| {r.name} | {'pass' if r.passed else '**FAIL**'} | {_fmt(r.value)} | {_fmt(r.threshold)} | {r.detail} |"
            )
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "not_comparable": self.not_comparable, "rules": [asdict(r) for r in self.rules]}


def evaluate_gate(
    gate: GateConfig,
    task: TaskEvaluation,
    forgetting: ForgettingReport,
    *,
    champion_task_loss: float | None = None,
    champion_not_comparable: str = "",
    leakage: LeakageReport | None = None,
) -> GateVerdict:
    """Apply every rule; `champion_task_loss` is the current champion's held-out loss on the same split,
    `champion_not_comparable` why there is a champion that cannot be compared (the verdict is then "not
    comparable"), `leakage` the eval rows checked against this run's and the champion's training rows."""
    rules: list[RuleResult] = []
    imp = task.improvement
    rules.append(
        RuleResult(
            name="task_improvement",
            passed=imp.low > gate.min_task_improvement,
            value=imp.low,
            threshold=gate.min_task_improvement,
            detail=(
                f"held-out loss {task.base_loss:.4f} -> {task.adapter_loss:.4f}; improvement "
                f"{imp.estimate:+.4f} [{imp.low:+.4f}, {imp.high:+.4f}] ({imp.confidence:.0%}); lower bound must exceed"
            ),
        )
    )
    for c in forgetting.comparisons:
        d = c.delta
        if c.kind == "accuracy":
            # Points on a 0-100 scale: the interval's low end is the worst plausible drop.
            low_points = 100.0 * d.low
            rules.append(
                RuleResult(
                    name=f"{c.task}_accuracy_drop",
                    passed=low_points >= -gate.max_accuracy_drop_points,
                    value=low_points,
                    threshold=-gate.max_accuracy_drop_points,
                    detail=(
                        f"accuracy {c.base.value:.3f} -> {c.adapter.value:.3f}; delta {100 * d.estimate:+.2f} pts "
                        f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]; lower bound must be at or above"
                    ),
                )
            )
        else:
            rules.append(
                RuleResult(
                    name=f"{c.task}_perplexity_increase",
                    passed=d.high <= gate.max_perplexity_increase,
                    value=d.high,
                    threshold=gate.max_perplexity_increase,
                    detail=(
                        f"perplexity {c.base.value:.3f} -> {c.adapter.value:.3f}; change {d.estimate:+.2%} "
                        f"[{d.low:+.2%}, {d.high:+.2%}]; upper bound must be at or below"
                    ),
                )
            )
    if leakage is not None:
        rules.append(
            RuleResult(
                name=LEAKAGE_RULE,
                passed=leakage.passed,
                value=float(leakage.overlapping) if all(not x.unknown for x in leakage.sides) else float("nan"),
                threshold=0.0,
                detail=leakage.detail(),
            )
        )
    if gate.beat_champion:
        if champion_not_comparable:
            rules.append(
                RuleResult(CHAMPION_RULE, False, float("nan"), 0.0, f"not comparable: {champion_not_comparable}")
            )
        elif champion_task_loss is None:
            rules.append(RuleResult(CHAMPION_RULE, True, float("nan"), 0.0, "no champion registered yet"))
        else:
            # The value is the improvement over the champion (nats/token), so the threshold is a number too.
            margin = champion_task_loss - task.adapter_loss
            rules.append(
                RuleResult(
                    name=CHAMPION_RULE,
                    passed=margin > 0.0,
                    value=margin,
                    threshold=0.0,
                    detail=(
                        f"held-out loss {task.adapter_loss:.4f} vs champion {champion_task_loss:.4f} on the same "
                        "frozen rows; the champion's loss minus ours must be above"
                    ),
                )
            )
    return GateVerdict(rules=rules, not_comparable=champion_not_comparable)
