"""The gate on what users care about: generation quality (ROUGE-L by a paired interval, exact match by McNemar's
exact test), per-category results, the minimum detectable effect next to each rule, and batched greedy decoding."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from scipy.stats import binomtest
from transformers import AutoModelForCausalLM

from pipeline.chat_format import load_tokenizer, render
from pipeline.config import GateConfig, load_config
from pipeline.evaluate.gate import EXACT_MATCH_RULE, ROUGE_RULE, evaluate_gate
from pipeline.evaluate.intervals import Interval, mean_delta, minimum_detectable_effect
from pipeline.evaluate.task_eval import TaskEvaluation, evaluate_task, greedy_generate, score_with_adapter
from pipeline.evaluate.task_quality import (
    champion_quality,
    mcnemar,
    mcnemar_exact_p,
    mcnemar_min_discordant,
    task_quality,
)
from pipeline.track.promotion import Assessment
from pipeline.track.review import run_description
from tests.conftest import make_records
from tests.test_gate import _report

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")
# The loss improves clearly: the task_improvement rule passes in every test below.
LOSS_IMPROVES = Interval(0.5, 0.3, 0.7, 0.95, se=0.1)


def _rows(
    base_rouge: list[float], adapter_rouge: list[float], base_em: list[bool], adapter_em: list[bool]
) -> list[dict[str, Any]]:
    return [
        {
            "task_id": i,
            "category": CATEGORIES[i % len(CATEGORIES)],
            "reference": f"answer {i}",
            "base_rouge_l": br,
            "adapter_rouge_l": ar,
            "base_exact_match": be,
            "adapter_exact_match": ae,
        }
        for i, (br, ar, be, ae) in enumerate(zip(base_rouge, adapter_rouge, base_em, adapter_em, strict=True))
    ]


def _task(rows: list[dict[str, Any]]) -> TaskEvaluation:
    quality = task_quality(rows, samples=1000, confidence=0.95, seed=0)
    return TaskEvaluation(
        base_nll=[2.0], adapter_nll=[1.0], tokens=[1], improvement=LOSS_IMPROVES, side_by_side=rows, quality=quality
    )


def _forgetting_ok() -> Any:
    return _report(Interval(-0.005, -0.015, 0.0, 0.95), Interval(0.01, 0.0, 0.04, 0.95))


def _noisy(n: int, mean: float, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(mean, 0.15, n), 0.0, 1.0).round(4).tolist()


# ---- McNemar --------------------------------------------------------------------------------------


def test_mcnemar_exact_p_value_on_a_known_table() -> None:
    """10 rows only the base got right, 2 only the adapter: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * 79 / 4096."""
    assert mcnemar_exact_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)
    assert mcnemar_exact_p(10, 2) == pytest.approx(0.038574, abs=1e-6)
    assert mcnemar_exact_p(10, 2) == pytest.approx(binomtest(2, 12, 0.5).pvalue)
    assert mcnemar_exact_p(2, 10) == mcnemar_exact_p(10, 2)  # two-sided: symmetric
    assert mcnemar_exact_p(0, 0) == 1.0 and mcnemar_exact_p(3, 3) == 1.0
    # Five discordant rows all one way cannot be significant at 5% (p = 1/16), six can (1/32).
    assert mcnemar_exact_p(5, 0) == pytest.approx(0.0625) and mcnemar_exact_p(6, 0) == pytest.approx(0.03125)
    assert mcnemar_min_discordant(0.05) == 6
    table = mcnemar([True, True, False, True], [False, True, True, False])
    assert (table.base_only, table.adapter_only, table.adapter_worse) == (2, 1, True)
    with pytest.raises(ValueError, match="discordant counts"):
        mcnemar_exact_p(-1, 2)


# ---- the rule -------------------------------------------------------------------------------------


def test_generations_that_get_worse_fail_the_task_quality_rule_while_the_loss_improves() -> None:
    """The demo's failure: the loss rule passes, the generations lose ROUGE-L and exact matches; the gate fails on
    both task-quality rules, each row with its interval and MDE."""
    n = 60
    base_em = [i % 3 == 0 for i in range(n)]  # 20 exact matches
    adapter_em = [i % 15 == 0 for i in range(n)]  # 4, all among the base's: 16 rows only the base matched
    task = _task(_rows(_noisy(n, 0.6, 1), _noisy(n, 0.4, 2), base_em, adapter_em))
    verdict = evaluate_gate(GateConfig(), task, _forgetting_ok())
    assert not verdict.passed
    assert verdict.failed_rules == [ROUGE_RULE, EXACT_MATCH_RULE]
    rules = {r.name: r for r in verdict.rules}
    assert rules["task_improvement"].passed
    rouge = rules[ROUGE_RULE]
    assert rouge.value == rouge.high < 0.0 == rouge.threshold and rouge.low < rouge.high
    assert rouge.mde == pytest.approx(minimum_detectable_effect(task.quality.rouge_l.se, 0.95))
    exact = rules[EXACT_MATCH_RULE]
    assert exact.value == pytest.approx(mcnemar_exact_p(16, 0)) and exact.threshold == pytest.approx(0.05)
    assert "16 rows only the base matched, 0 only the adapter" in exact.detail
    text = verdict.markdown()
    assert "| rule | result | value judged | threshold | interval | MDE | detail |" in text
    assert f"| {ROUGE_RULE} | **FAIL** | {rouge.high:+.4f} | +0.0000 | [{rouge.low:+.4f}, {rouge.high:+.4f}] |" in text
    m = verdict.metrics()
    assert m[f"gate_{ROUGE_RULE}_passed"] == 0.0 and m[f"gate_{ROUGE_RULE}_mde"] == pytest.approx(rouge.mde)
    assert m["gate_task_improvement_mde"] == pytest.approx(LOSS_IMPROVES.mde)


def test_improving_generations_pass_and_a_margin_tolerates_a_small_significant_drop() -> None:
    n = 60
    em = [i % 3 == 0 for i in range(n)]
    better = _task(_rows(_noisy(n, 0.4, 1), _noisy(n, 0.6, 2), [False] * n, em))
    assert evaluate_gate(GateConfig(), better, _forgetting_ok()).passed
    # A consistent 0.01 drop on every row: significant, so the default (margin 0) fails; a 0.02 margin passes.
    base = _noisy(n, 0.5, 3)
    slightly = _task(_rows(base, [b - 0.01 for b in base], em, em))
    assert slightly.quality.rouge_l.high < 0
    assert evaluate_gate(GateConfig(), slightly, _forgetting_ok()).failed_rules == [ROUGE_RULE]
    assert evaluate_gate(GateConfig(max_rouge_l_drop=0.02), slightly, _forgetting_ok()).passed
    # The rules can be switched off; then they are not in the verdict at all.
    off = evaluate_gate(GateConfig(task_quality=False), slightly, _forgetting_ok())
    assert off.passed and ROUGE_RULE not in {r.name for r in off.rules}


def test_a_few_lost_exact_matches_are_not_significant() -> None:
    """Three rows lost out of 60 (p = 0.25): the exact-match rule passes, its MDE says what it could have seen."""
    n = 60
    base_em = [i < 10 for i in range(n)]
    adapter_em = [3 <= i < 10 for i in range(n)]
    rouge = _noisy(n, 0.5, 4)
    verdict = evaluate_gate(GateConfig(), _task(_rows(rouge, rouge, base_em, adapter_em)), _forgetting_ok())
    rule = {r.name: r for r in verdict.rules}[EXACT_MATCH_RULE]
    assert rule.passed and rule.value == pytest.approx(0.25)
    assert rule.mde >= mcnemar_min_discordant(0.05) / n


def test_no_generations_fail_the_rule_with_the_remedy() -> None:
    task = TaskEvaluation(base_nll=[2.0], adapter_nll=[1.0], tokens=[1], improvement=LOSS_IMPROVES)
    verdict = evaluate_gate(GateConfig(), task, _forgetting_ok())
    assert verdict.failed_rules == [ROUGE_RULE, EXACT_MATCH_RULE]
    assert "eval.generation_samples" in verdict.rules[1].detail
    assert evaluate_gate(GateConfig(task_quality=False), task, _forgetting_ok()).passed


def test_the_mde_shrinks_with_more_rows() -> None:
    """Same per-row spread, four times the rows: the MDE about halves (SE ~ 1/sqrt(n)); 2.8 x SE at 95% / 80%."""
    assert minimum_detectable_effect(1.0, 0.95) == pytest.approx(2.80, abs=0.01)
    mdes = []
    for n in (25, 100, 400):
        base, adapter = _noisy(n, 0.5, 5), _noisy(n, 0.5, 6)
        mdes.append(mean_delta(base, adapter, samples=2000, seed=0).mde)
    assert mdes[0] > mdes[1] > mdes[2]
    assert mdes[1] / mdes[0] == pytest.approx(0.5, abs=0.1) and mdes[2] / mdes[1] == pytest.approx(0.5, abs=0.1)


def test_per_category_results_and_the_report_section() -> None:
    n = 40
    base = [0.2] * n
    adapter = [0.8 if i % 4 == 0 else 0.2 for i in range(n)]  # only "schedules" (i % 4 == 0) improves
    q = task_quality(_rows(base, adapter, [False] * n, [False] * n), samples=500, confidence=0.95, seed=0)
    by_name = {c.category: c for c in q.categories}
    assert set(by_name) == set(CATEGORIES) and all(c.rows == 10 for c in q.categories)
    assert by_name["schedules"].rouge_l_adapter == pytest.approx(0.8)
    assert by_name["tickets"].rouge_l_adapter == pytest.approx(0.2) == by_name["tickets"].rouge_l_base
    text = q.markdown()
    assert "| schedules | 10 | 0.200 | 0.800 | 0.000 | 0.000 |" in text
    assert "## Task quality (greedy generations on 40 held-out rows)" in text
    assert q.metrics()["task_rouge_l_delta"] == pytest.approx(0.15)


def test_champion_generations_give_a_paired_interval_and_show_on_the_run_page() -> None:
    n = 40
    rows = _rows(_noisy(n, 0.4, 1), _noisy(n, 0.6, 2), [False] * n, [False] * n)
    champ_rouge = [r["adapter_rouge_l"] - 0.1 for r in rows]
    cq = champion_quality(rows, champ_rouge, [False] * n, samples=500, confidence=0.95, seed=0)
    assert cq.rouge_l_delta.estimate == pytest.approx(0.1) and cq.rouge_l_delta.low == pytest.approx(0.1)
    task = _task(rows)
    forgetting = _forgetting_ok()
    verdict = evaluate_gate(GateConfig(), task, forgetting, champion_task_loss=1.25, champion_quality=cq)
    champion_rule = {r.name: r for r in verdict.rules}["beats_champion"]
    assert champion_rule.passed and "ROUGE-L adapter - champion +0.1000" in champion_rule.detail
    assessment = Assessment(forgetting, task, verdict, "1", 1.25, "version 1", None, cq)
    text = run_description(assessment, run_id="abc", base_model="tiny-base")
    assert "| rule | value | threshold | result | interval | MDE |" in text
    assert f"| {ROUGE_RULE} | " in text and "nan" not in text
    assert f"| ROUGE-L | {sum(r['base_rouge_l'] for r in rows) / n:.3f} |" in text
    assert f"| {cq.rouge_l:.3f} |" in text
    assert assessment.metrics()["task_rouge_l_vs_champion"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="champion scores cover 3 rows"):
        champion_quality(rows, [0.0] * 3, [False] * 3, samples=500, confidence=0.95, seed=0)


# ---- batched decoding on the tiny model ------------------------------------------------------------


def _random_adapter(tiny_model_dir: Path) -> Any:
    torch.manual_seed(0)
    return get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"),
    )


def test_batched_greedy_decoding_equals_one_prompt_at_a_time(tiny_model_dir: Path) -> None:
    """Left padding with the attention mask changes nothing: prompts of different lengths, batches of 4."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    prompts = [render(tok, r)[0] for r in make_records(10).itertuples(index=False)]
    assert len({len(tok(p)["input_ids"]) for p in prompts}) > 1  # padding is really exercised
    assert greedy_generate(model, tok, prompts, 12, batch_size=4) == greedy_generate(model, tok, prompts, 12)


def test_task_evaluation_generates_for_every_held_out_row_by_default(tiny_model_dir: Path, tmp_path: Path) -> None:
    """generation_samples null: every held-out row is generated and scored, with categories and intervals; the
    same adapter loaded as the champion scores the same (a zero ROUGE-L delta)."""
    tok = load_tokenizer(str(tiny_model_dir))
    records = make_records(12)
    cfg = load_config(base_model=str(tiny_model_dir), eval={"max_new_tokens": 8, "bootstrap_samples": 200})
    assert cfg.eval.generation_samples is None
    model = _random_adapter(tiny_model_dir)
    result = evaluate_task(model, tok, records, cfg)
    assert [r["task_id"] for r in result.side_by_side] == records["task_id"].tolist()
    assert {r["category"] for r in result.side_by_side} == set(records["category"])
    assert result.quality is not None and result.quality.rows == 12
    assert sum(c.rows for c in result.quality.categories) == 12
    model.save_pretrained(tmp_path / "same")
    champion = score_with_adapter(model, tok, records, str(tmp_path / "same"), cfg, result.side_by_side)
    assert champion.task_loss == pytest.approx(result.adapter_loss, rel=1e-5)
    assert champion.quality is not None and champion.quality.rouge_l_delta.estimate == pytest.approx(0.0, abs=1e-9)
    # The same adapter as champion answers every prompt as ours did; the logged table carries its answers.
    assert list(champion.outputs) == [r["adapter_output"] for r in result.side_by_side]
    assessment = Assessment(_forgetting_ok(), result, evaluate_gate(GateConfig(), result, _forgetting_ok()))
    assert assessment.generations() == result.side_by_side  # no champion compared: no champion column
    table = replace(assessment, champion_outputs=champion.outputs).generations()
    assert [r["champion_output"] for r in table] == [r["adapter_output"] for r in table]
    assert {"prompt", "reference", "base_output", "adapter_output", "champion_output"} <= set(table[0])
