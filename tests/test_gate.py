"""The promotion gate: paired bootstrap intervals, rules on interval bounds, and the tiny-model verdicts
(an over-trained adapter trips the forgetting budget; a sane one passes every rule)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import GateConfig, PipelineConfig, load_config
from pipeline.evaluate.forgetting import ForgettingReport, TaskComparison
from pipeline.evaluate.gate import evaluate_gate
from pipeline.evaluate.harness import TaskScores
from pipeline.evaluate.intervals import Interval, accuracy_delta, loss_improvement, perplexity_change
from pipeline.evaluate.task_eval import TaskEvaluation
from pipeline.evaluate.task_quality import task_quality
from pipeline.track.promotion import Assessment, assess_adapter, write_artifacts
from pipeline.train.recipe import train_adapter
from pipeline.train.results import TrainResult
from tests.conftest import make_records

# ---- bootstrap -------------------------------------------------------------------------------


def test_paired_interval_brackets_the_estimate_and_is_reproducible() -> None:
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2, 200).astype(float).tolist()
    adapter = [b if rng.random() > 0.1 else 1 - b for b in base]
    a = accuracy_delta(base, adapter, samples=500, seed=3)
    b = accuracy_delta(base, adapter, samples=500, seed=3)
    assert a == b
    assert a.low <= a.estimate <= a.high
    assert a.estimate == pytest.approx(np.mean(adapter) - np.mean(base))


def test_pairing_makes_a_small_consistent_drop_detectable() -> None:
    """Adapter wrong on exactly 3 of 100 items the base got right, nothing else changes: the paired
    interval excludes zero although the two accuracies are close."""
    base = [1.0] * 90 + [0.0] * 10
    adapter = [0.0] * 3 + [1.0] * 87 + [0.0] * 10
    d = accuracy_delta(base, adapter, samples=2000, seed=0)
    assert d.estimate == pytest.approx(-0.03)
    assert d.high <= 0.0 and d.low < -0.0


def test_perplexity_change_is_relative_and_token_weighted() -> None:
    nll_base, tokens = [10.0, 20.0, 30.0], [10.0, 20.0, 30.0]  # 1 nat/token -> ppl e
    nll_adapter = [11.0, 22.0, 33.0]  # 1.1 nats/token
    d = perplexity_change((nll_base, tokens), (nll_adapter, tokens), samples=200)
    assert d.estimate == pytest.approx(np.exp(1.1) / np.exp(1.0) - 1)
    assert d.low == pytest.approx(d.estimate) and d.high == pytest.approx(d.estimate)  # same per-token change


def test_loss_improvement_sign() -> None:
    d = loss_improvement(([5.0, 5.0], [1.0, 1.0]), ([4.0, 4.5], [1.0, 1.0]), samples=200)
    assert d.estimate == pytest.approx(0.75) and d.low > 0


def test_grouped_items_are_resampled_as_one_unit() -> None:
    """A fact asked three times in the same way carries no more evidence than one item: with its three items in one
    group the interval equals the one-item-per-fact interval (same seed); scored as independent items the same
    data gives a narrower, overconfident interval."""
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, 120).astype(float)
    adapter = np.where(rng.random(120) < 0.15, 1 - base, base)
    one = accuracy_delta(base.tolist(), adapter.tolist(), samples=2000, seed=5)
    tripled_b, tripled_a = np.repeat(base, 3).tolist(), np.repeat(adapter, 3).tolist()
    groups = [f"fact-{i}" for i in np.repeat(np.arange(120), 3)]
    grouped = accuracy_delta(tripled_b, tripled_a, samples=2000, seed=5, groups=groups)
    assert (grouped.estimate, grouped.low, grouped.high) == pytest.approx((one.estimate, one.low, one.high))
    naive = accuracy_delta(tripled_b, tripled_a, samples=2000, seed=5)
    assert naive.se < 0.7 * one.se  # what ignoring the groups would claim
    # An empty group is an item on its own: no groups at all is the plain item bootstrap.
    assert accuracy_delta(tripled_b, tripled_a, samples=2000, seed=5, groups=[""] * 360) == naive
    with pytest.raises(ValueError, match="groups: 3 labels for 360 items"):
        accuracy_delta(tripled_b, tripled_a, samples=10, groups=["a", "b", "c"])


def test_mismatched_item_counts_are_refused() -> None:
    with pytest.raises(ValueError, match="same non-zero number of items"):
        accuracy_delta([1.0, 0.0], [1.0], samples=100)


# ---- rules on synthetic results -------------------------------------------------------------


def _scores(task: str, kind: str, values: list[float], weights: list[float]) -> TaskScores:
    return TaskScores(task=task, kind=kind, doc_ids=list(range(len(values))), values=values, weights=weights)  # type: ignore[arg-type]


def _report(acc_delta: Interval, ppl_change: Interval) -> ForgettingReport:
    mc = _scores("mc", "accuracy", [1.0, 1.0], [1.0, 1.0])
    ppl = _scores("ppl", "perplexity", [1.0, 1.0], [1.0, 1.0])
    return ForgettingReport(
        suite="synthetic",
        comparisons=[
            TaskComparison("mc", "accuracy", mc, mc, acc_delta),
            TaskComparison("ppl", "perplexity", ppl, ppl, ppl_change),
        ],
    )


def _task(improvement: Interval, adapter_nll: float = 1.0) -> TaskEvaluation:
    """A task evaluation whose generations are unchanged by the adapter (the task-quality rules pass)."""
    rows = [
        dict(category="tickets", base_rouge_l=0.5, adapter_rouge_l=0.5, base_exact_match=i % 4 == 0) for i in range(20)
    ]
    rows = [r | {"adapter_exact_match": r["base_exact_match"]} for r in rows]
    quality = task_quality(rows, samples=200, confidence=0.95, seed=0)
    return TaskEvaluation(
        base_nll=[2.0],
        adapter_nll=[adapter_nll],
        tokens=[1],
        improvement=improvement,
        side_by_side=rows,
        quality=quality,
    )


def test_rules_judge_the_interval_bound_not_the_point_estimate() -> None:
    """Point estimates inside every budget, but each interval's pessimistic end outside it: the gate fails."""
    gate = GateConfig()
    verdict = evaluate_gate(
        gate,
        _task(Interval(0.2, -0.01, 0.4, 0.95)),  # improvement estimate > 0, lower bound < 0
        _report(Interval(-0.01, -0.05, 0.02, 0.95), Interval(0.02, -0.01, 0.08, 0.95)),
    )
    assert not verdict.passed
    assert verdict.failed_rules == ["task_improvement", "mc_accuracy_drop", "ppl_perplexity_increase"]
    by_name = {r.name: r for r in verdict.rules}
    assert by_name["mc_accuracy_drop"].value == pytest.approx(-5.0)  # points, the interval's low end
    assert by_name["ppl_perplexity_increase"].value == pytest.approx(0.08)  # the interval's high end
    assert verdict.metrics()["gate_passed"] == 0.0


def test_all_bounds_within_budget_pass_and_the_champion_rule_compares_losses() -> None:
    gate = GateConfig()
    task = _task(Interval(0.5, 0.3, 0.7, 0.95), adapter_nll=1.0)
    report = _report(Interval(-0.005, -0.015, 0.0, 0.95), Interval(0.01, 0.0, 0.04, 0.95))
    assert evaluate_gate(gate, task, report).passed  # no champion yet
    assert evaluate_gate(gate, task, report, champion_task_loss=1.2).passed
    lost = evaluate_gate(gate, task, report, champion_task_loss=0.9)
    assert lost.failed_rules == ["beats_champion"]
    assert "Promotion gate: FAILED (beats_champion)" in lost.markdown()
    # The champion rule can be switched off; budgets are configurable.
    assert evaluate_gate(GateConfig(beat_champion=False), task, report, champion_task_loss=0.9).passed
    assert not evaluate_gate(GateConfig(max_accuracy_drop_points=1.0), task, report).passed


def test_beats_champion_judges_the_difference_against_a_real_threshold() -> None:
    """The value is the champion's loss minus ours (not a raw loss) and the threshold is 0, never nan."""
    task = _task(Interval(0.5, 0.3, 0.7, 0.95), adapter_nll=1.0)
    report = _report(Interval(-0.005, -0.015, 0.0, 0.95), Interval(0.01, 0.0, 0.04, 0.95))
    won = evaluate_gate(GateConfig(), task, report, champion_task_loss=1.25)
    rule = {r.name: r for r in won.rules}["beats_champion"]
    assert rule.value == pytest.approx(0.25) and rule.threshold == 0.0 and rule.passed
    assert won.metrics()["gate_beats_champion_threshold"] == 0.0
    assert "| beats_champion | pass | +0.2500 | +0.0000 |" in won.markdown()


def test_a_champion_on_another_base_is_not_comparable_never_a_pass() -> None:
    task = _task(Interval(0.5, 0.3, 0.7, 0.95), adapter_nll=1.0)
    report = _report(Interval(-0.005, -0.015, 0.0, 0.95), Interval(0.01, 0.0, 0.04, 0.95))
    verdict = evaluate_gate(GateConfig(), task, report, champion_not_comparable="version 3 was trained on another base")
    assert not verdict.passed and verdict.failed_rules == ["beats_champion"]
    assert verdict.headline == "NOT COMPARABLE (version 3 was trained on another base)"
    assert "Promotion gate: NOT COMPARABLE" in verdict.markdown()


def test_leakage_rule_fails_on_any_eval_row_a_training_set_holds() -> None:
    """Rows are matched by normalized prompt + response (not task id): a champion that trained on an eval row
    under another task id, reworded only in case and punctuation, is caught; an unreadable champion fails too."""
    from pipeline.evaluate.leakage import LeakageReport, content_keys, overlap, unknown

    eval_rows = make_records(6)
    champion_train = eval_rows.iloc[[2]].assign(task_id=999, prompt=lambda d: d["prompt"].str.upper() + "!!")
    pool = make_records(40)
    own_train = pool[[k not in set(content_keys(eval_rows)) for k in content_keys(pool)]]
    clean = LeakageReport(6, (overlap(eval_rows, "this run's training rows", set(content_keys(own_train))),))
    caught = clean.with_side(
        overlap(eval_rows, "champion version 1's training rows", set(content_keys(champion_train)))
    )
    task = _task(Interval(0.5, 0.3, 0.7, 0.95), adapter_nll=1.0)
    report = _report(Interval(-0.005, -0.015, 0.0, 0.95), Interval(0.01, 0.0, 0.04, 0.95))
    assert evaluate_gate(GateConfig(), task, report, leakage=clean).passed
    verdict = evaluate_gate(GateConfig(), task, report, champion_task_loss=1.2, leakage=caught)
    assert verdict.failed_rules == ["no_eval_leakage"]
    rule = {r.name: r for r in verdict.rules}["no_eval_leakage"]
    assert rule.value == 1.0 and rule.threshold == 0.0
    assert f"champion version 1's training rows: 1 (eval task ids {int(eval_rows['task_id'].iloc[2])})" in rule.detail
    blind = clean.with_side(unknown("champion version 1's training rows", "its run has no snapshot"))
    assert not evaluate_gate(GateConfig(), task, report, leakage=blind).passed


# ---- the tiny model: over-trained fails, sane passes ------------------------------------------


def _train(
    tiny: Path, out: Path, train_df: pd.DataFrame, held: pd.DataFrame, **knobs: dict
) -> tuple[PipelineConfig, TrainResult]:
    cfg = load_config(base_model=str(tiny), eval={"generation_samples": 2, "max_new_tokens": 16}, **knobs)
    return cfg, train_adapter(cfg, train_df, held, out)


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame]:
    records = make_records(64)
    return records.iloc[:48], records.iloc[48:]


@pytest.mark.slow
def test_overtrained_adapter_trips_the_forgetting_gate(
    tiny_model_dir: Path, tmp_path: Path, split: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    """High LR, all linear layers, many epochs on narrow ferry data: task loss improves, general ability
    collapses, and the gate fails on the forgetting rules (while the task rule passes)."""
    cfg, result = _train(
        tiny_model_dir,
        tmp_path / "hot",
        *split,
        lora={"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear"},
        train={"learning_rate": 1e-2, "epochs": 4, "batch_size": 8},
    )
    assessment = assess_adapter(cfg, result.adapter_dir, split[1])
    failed = assessment.verdict.failed_rules
    assert "general_suite_mc_accuracy_drop" in failed and "general_suite_ppl_perplexity_increase" in failed
    assert "task_improvement" not in failed


@pytest.mark.slow
def test_sane_adapter_passes_every_rule_and_writes_the_report(
    tiny_model_dir: Path, tmp_path: Path, split: tuple[pd.DataFrame, pd.DataFrame]
) -> None:
    """Low LR on q/v only for two epochs: the held-out loss improves (lower bound > 0) and the
    general suite stays within budget at the interval's bound."""
    cfg, result = _train(
        tiny_model_dir,
        tmp_path / "sane",
        *split,
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "qv"},
        train={"learning_rate": 1e-3, "epochs": 2, "batch_size": 8},
    )
    assessment: Assessment = assess_adapter(cfg, result.adapter_dir, split[1])
    assert assessment.verdict.passed, assessment.report_markdown()
    assert assessment.task.improvement.low > 0
    out = write_artifacts(assessment, result.history, tmp_path / "evaluation")
    assert {p.name for p in out.iterdir()} >= {
        "gate_report.md",
        "gate_verdict.json",
        "forgetting.json",
        "task_eval.json",
        "side_by_side.html",
        "forgetting.png",
        "loss_curves.png",
    }
    assert (out / "forgetting.png").read_bytes()[:4] == b"\x89PNG"
    assert "Promotion gate: PASSED" in (out / "gate_report.md").read_text()
