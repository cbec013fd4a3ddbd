"""The promotion gate: configurable rules on interval bounds, a verdict with every rule's numbers.

Rules judge an end of each paired interval, never the point estimate. Budget rules judge the pessimistic
end: an adapter passes the forgetting budget (a non-inferiority margin) only if even the bad end of the
interval is within it, and it improves on the task only if the lower bound of the improvement clears the
threshold. The task-quality rules fail on evidence of harm: when the generations' ROUGE-L is significantly
worse than the base's (the whole interval below the margin) or McNemar's exact test on exact match is
significant with the adapter worse. Each rule reports its minimum detectable effect (MDE, 80% power), so a
reviewer sees when the eval set is too small to tell.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pipeline.config import GateConfig
from pipeline.evaluate.forgetting import ForgettingReport
from pipeline.evaluate.leakage import LeakageReport
from pipeline.evaluate.llm_judge import JudgeResult
from pipeline.evaluate.task_eval import TaskEvaluation
from pipeline.evaluate.task_quality import ChampionQuality


@dataclass(frozen=True)
class RuleResult:
    """One rule: the number it judged (an interval bound), the threshold, and whether it passed; the interval
    it came from and the minimum detectable effect on the same scale (nan: the rule has none)."""

    name: str
    passed: bool
    value: float
    threshold: float
    detail: str
    low: float = math.nan
    high: float = math.nan
    mde: float = math.nan


# The leakage rule's name (the validation check `no_train_eval_leakage` judges one snapshot's split only).
LEAKAGE_RULE = "no_eval_leakage"
CHAMPION_RULE = "beats_champion"
ROUGE_RULE = "task_quality_rouge_l"
EXACT_MATCH_RULE = "task_quality_exact_match"
JUDGE_RULE = "llm_judge_preference"


def _fmt(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else "n/a"


def _neg(margin: float) -> float:
    """-margin, without the -0.0 that would print as "-0.0000"."""
    return -margin if margin else 0.0


def interval_text(r: RuleResult) -> str:
    """`[low, high]` of the rule's interval, or n/a."""
    return f"[{_fmt(r.low)}, {_fmt(r.high)}]" if math.isfinite(r.low) and math.isfinite(r.high) else "n/a"


def mde_text(r: RuleResult) -> str:
    return f"{r.mde:.4f}" if math.isfinite(r.mde) else "n/a"


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
            if math.isfinite(r.mde):
                out[f"gate_{r.name}_mde"] = r.mde
        return out

    def markdown(self, title: str = "Promotion gate") -> str:
        lines = [
            f"# {title}: {self.headline}",
            "",
            "Budget rules judge the pessimistic bound of a paired bootstrap interval, not the point estimate; the "
            "task-quality rules fail on a significant drop. MDE: the smallest true effect the eval set detects "
            "with 80% power (same scale as the interval); an effect below it can pass unseen.",
            "",
            "| rule | result | value judged | threshold | interval | MDE | detail |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rules:
            lines.append(
                f"| {r.name} | {'pass' if r.passed else '**FAIL**'} | {_fmt(r.value)} | {_fmt(r.threshold)} | "
                f"{interval_text(r)} | {mde_text(r)} | {r.detail} |"
            )
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "not_comparable": self.not_comparable, "rules": [asdict(r) for r in self.rules]}


def _task_quality_rules(gate: GateConfig, task: TaskEvaluation) -> list[RuleResult]:
    """No significant drop in generation quality vs the base: ROUGE-L by its paired interval, exact match by
    McNemar's exact test. Without generations both fail (never a silent pass)."""
    q = task.quality
    if q is None:
        why = "no generations scored; set eval.generation_samples above 0 (null: all rows) or gate.task_quality: false"
        alpha = 1.0 - task.improvement.confidence
        return [
            RuleResult(ROUGE_RULE, False, math.nan, _neg(gate.max_rouge_l_drop), why),
            RuleResult(EXACT_MATCH_RULE, False, math.nan, alpha, why),
        ]
    r, e, m = q.rouge_l, q.exact_match, q.mcnemar
    metrics = task.metrics()
    m_base, m_adapter = metrics["task_rouge_l_base"], metrics["task_rouge_l_adapter"]
    rouge = RuleResult(
        name=ROUGE_RULE,
        passed=r.high >= _neg(gate.max_rouge_l_drop),
        value=r.high,
        threshold=_neg(gate.max_rouge_l_drop),
        detail=(
            f"ROUGE-L of greedy generations on {q.rows} held-out rows {m_base:.3f} -> {m_adapter:.3f}; adapter - base "
            f"{r.estimate:+.4f} [{r.low:+.4f}, {r.high:+.4f}] ({r.confidence:.0%}); fails when the upper bound is "
            "below (a significant drop beyond the margin)"
        ),
        low=r.low,
        high=r.high,
        mde=r.mde,
    )
    significant_drop = m.p_value < q.alpha and m.adapter_worse
    exact = RuleResult(
        name=EXACT_MATCH_RULE,
        passed=not significant_drop,
        value=m.p_value,
        threshold=q.alpha,
        detail=(
            f"exact match adapter - base {e.estimate:+.4f} on {q.rows} rows; McNemar exact test: {m.base_only} rows "
            f"only the base matched, {m.adapter_only} only the adapter, p = {m.p_value:.3g}; fails when p is below "
            "and the adapter is the worse side"
        ),
        low=e.low,
        high=e.high,
        mde=q.exact_match_mde,
    )
    return [rouge, exact]


def _judge_rule(gate: GateConfig, judge: JudgeResult | None) -> RuleResult:
    """The LLM judge's pairwise preference, adapter vs base: fails on a significant preference for the base
    beyond the margin, and when the judge gave no verdict (unreachable, unparseable) — never a silent pass."""
    threshold = _neg(gate.max_judge_preference_drop)
    if judge is None or judge.preference is None:
        why = judge.error if judge is not None else "the judge was not asked"
        return RuleResult(JUDGE_RULE, False, math.nan, threshold, f"no verdict from {gate.llm_judge_model}: {why}")
    p, c = judge.preference, judge.counts
    return RuleResult(
        name=JUDGE_RULE,
        passed=p.high >= threshold,
        value=p.high,
        threshold=threshold,
        detail=(
            f"{judge.model} preferred the adapter on {c['adapter']}, the base on {c['base']}, tie {c['tie']}, no "
            f"verdict {c['invalid']} of {len(judge.rows)} rows; preference - 0.5 {p.estimate:+.4f} "
            f"[{p.low:+.4f}, {p.high:+.4f}]; fails when the upper bound is below"
        ),
        low=p.low,
        high=p.high,
        mde=p.mde,
    )


def _champion_rule(
    task: TaskEvaluation, champion_task_loss: float, champion_quality: ChampionQuality | None
) -> RuleResult:
    # The value is the improvement over the champion (nats/token), so the threshold is a number too.
    margin = champion_task_loss - task.adapter_loss
    detail = (
        f"held-out loss {task.adapter_loss:.4f} vs champion {champion_task_loss:.4f} on the same "
        "frozen rows; the champion's loss minus ours must be above"
    )
    if champion_quality is not None:
        d = champion_quality.rouge_l_delta
        detail += (
            f". ROUGE-L adapter - champion {d.estimate:+.4f} [{d.low:+.4f}, {d.high:+.4f}] (MDE {d.mde:.4f}), "
            "reported, not judged"
        )
    return RuleResult(name=CHAMPION_RULE, passed=margin > 0.0, value=margin, threshold=0.0, detail=detail)


def evaluate_gate(
    gate: GateConfig,
    task: TaskEvaluation,
    forgetting: ForgettingReport,
    *,
    champion_task_loss: float | None = None,
    champion_not_comparable: str = "",
    leakage: LeakageReport | None = None,
    champion_quality: ChampionQuality | None = None,
    judge: JudgeResult | None = None,
) -> GateVerdict:
    """Apply every rule; `champion_task_loss` is the current champion's held-out loss on the same split,
    `champion_not_comparable` why there is a champion that cannot be compared (the verdict is then "not
    comparable"), `leakage` the eval rows checked against this run's and the champion's training rows,
    `champion_quality` the champion's generations on the same rows (reported beside the champion rule), `judge`
    the LLM judge's verdicts (judged when gate.llm_judge_model is set)."""
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
            low=imp.low,
            high=imp.high,
            mde=imp.mde,
        )
    )
    if gate.task_quality:
        rules += _task_quality_rules(gate, task)
    if gate.llm_judge_model:
        rules.append(_judge_rule(gate, judge))
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
                        f"[{100 * d.low:+.2f}, {100 * d.high:+.2f}]; non-inferiority margin: the lower bound must be "
                        "at or above"
                    ),
                    low=100.0 * d.low,
                    high=100.0 * d.high,
                    mde=100.0 * d.mde,
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
                        f"[{d.low:+.2%}, {d.high:+.2%}]; non-inferiority margin: the upper bound must be at or below"
                    ),
                    low=d.low,
                    high=d.high,
                    mde=d.mde,
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
            rules.append(_champion_rule(task, champion_task_loss, champion_quality))
    return GateVerdict(rules=rules, not_comparable=champion_not_comparable)
