"""Forgetting check on the tiny model through lm-eval: sound base scores, honest deltas, the silent-failure guards."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from pipeline.chat_format import load_tokenizer
from pipeline.config import load_config
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.evaluate.forgetting import (
    AdapterNotAppliedError,
    ForgettingReport,
    evaluate_saved_adapter,
    forgetting_check,
    load_verified_adapter,
    score_suite,
)
from pipeline.evaluate.general_suite import load_general_suite
from pipeline.evaluate.harness import builtin_task_dir, builtin_task_names
from pipeline.train.manifest import MANIFEST, check_manifest_matches
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_adapter(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An adapter trained hard on narrow data (high LR, many steps): it should forget general text."""
    out = tmp_path_factory.mktemp("adapter")
    records = make_records(48)
    cfg = load_config(
        base_model=str(tiny_model_dir),
        lora={"r": 8, "alpha": 16.0, "dropout": 0.0, "target_modules": "all-linear"},
        train={"learning_rate": 1e-2, "epochs": 4, "batch_size": 8},
    )
    train_adapter(cfg, records, records.iloc[:0], out)
    return out


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"network access attempted: {args!r}")


@pytest.fixture(scope="module")
def report(tiny_model_dir: Path, trained_adapter: Path) -> ForgettingReport:
    """One lm-eval run (base + adapter) with the hub forced offline and every socket connect refused."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        mp.setattr(socket.socket, "connect", _no_network)
        return evaluate_saved_adapter(load_config(base_model=str(tiny_model_dir)), trained_adapter)


def test_builtin_suite_ships_as_lm_eval_tasks() -> None:
    """The task YAMLs and their loader are package data next to the JSONL files."""
    assert {"general_suite_mc", "general_suite_ppl"} <= builtin_task_names()
    assert (builtin_task_dir() / "lm_eval_tasks.py").is_file()
    assert (builtin_task_dir() / "multiple_choice.jsonl").is_file()


def test_lm_eval_runs_offline_and_scores_every_document(report: ForgettingReport) -> None:
    """Both built-in tasks ran without the network; per-document scores cover the whole suite."""
    suite = load_general_suite()
    mc, ppl = report.comparison("general_suite_mc"), report.comparison("general_suite_ppl")
    assert mc.base.doc_ids == list(range(len(suite.mc_items))) == mc.adapter.doc_ids
    assert len(ppl.base.values) == len(suite.texts) and all(w > 0 for w in ppl.base.weights)
    # Our aggregation of lm-eval's per-document samples equals lm-eval's own aggregate.
    assert mc.adapter.value == pytest.approx(mc.adapter.harness_value)
    assert ppl.base.value == pytest.approx(ppl.base.harness_value, rel=1e-9)


def test_lm_eval_base_scores_equal_an_independent_scorer_on_the_plain_base(
    tiny_model_dir: Path, report: ForgettingReport
) -> None:
    """Base scores taken by lm-eval inside disable_adapter() equal our own scorer on the base loaded alone."""
    tok = load_tokenizer(str(tiny_model_dir))
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    expected = score_suite(plain, tok, load_general_suite(), batch_size=16)
    assert report.comparison("general_suite_mc").base.values == [float(c) for c in expected.mc_correct]


def test_disabled_adapter_scores_exactly_like_the_plain_base(tiny_model_dir: Path, trained_adapter: Path) -> None:
    """Base scores taken through disable_adapter() equal scores of the base model loaded alone."""
    tok = load_tokenizer(str(tiny_model_dir))
    suite = load_general_suite()
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    expected = score_suite(plain, tok, suite, batch_size=16)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(trained_adapter))
    with model.disable_adapter():
        got = score_suite(model, tok, suite, batch_size=16)
    assert got.mc_correct == expected.mc_correct
    assert got.text_nll == pytest.approx(expected.text_nll, rel=1e-5)


def test_batch_size_does_not_change_scores(tiny_model_dir: Path) -> None:
    """Padding and batching leave per-item scores unchanged."""
    tok = load_tokenizer(str(tiny_model_dir))
    suite = load_general_suite()
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    one = score_suite(model, tok, suite, batch_size=1)
    many = score_suite(model, tok, suite, batch_size=32)
    assert one.mc_correct == many.mc_correct
    assert one.text_nll == pytest.approx(many.text_nll, rel=1e-4)


def test_overtrained_adapter_shows_forgetting_beyond_the_interval(report: ForgettingReport) -> None:
    """The base knows its general suite; an adapter over-trained on ferry data is worse, and the
    whole paired interval says so (not just the point estimate)."""
    m = report.metrics()
    mc, ppl = report.comparison("general_suite_mc"), report.comparison("general_suite_ppl")
    assert m["forgetting_mc_acc_base"] > 0.8  # the tiny base was pretrained on the suite
    assert ppl.delta.low > 0 and m["forgetting_ppl_adapter"] > m["forgetting_ppl_base"]
    assert mc.delta.high < 0 and mc.delta.low <= mc.delta.estimate <= mc.delta.high
    assert m["forgetting_general_suite_mc_acc_delta_low"] == mc.delta.low
    assert m["forgetting_mc_acc_delta"] == pytest.approx(m["forgetting_mc_acc_adapter"] - m["forgetting_mc_acc_base"])


def test_untrained_adapter_trips_the_applied_guard(tiny_model_dir: Path) -> None:
    """A fresh LoRA adapter (B = 0) changes nothing: the check refuses to report base-vs-base as a result."""
    tok = load_tokenizer(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(AdapterNotAppliedError, match="identical logits"):
        forgetting_check(model, tok, load_config(base_model=str(tiny_model_dir)))


def test_saved_zero_weight_adapter_is_refused_at_load(
    tiny_model_dir: Path, trained_adapter: Path, tmp_path: Path
) -> None:
    """Loading a saved adapter whose LoRA weights are all zero fails the applied guard before any scoring."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "zeroed"
    shutil.copytree(trained_adapter, copy)
    weights = load_file(str(copy / "adapter_model.safetensors"))
    save_file({k: torch.zeros_like(v) for k, v in weights.items()}, str(copy / "adapter_model.safetensors"))
    with pytest.raises(AdapterNotAppliedError):
        load_verified_adapter(load_config(base_model=str(tiny_model_dir)), copy)


def test_adapter_on_another_base_trips_the_manifest_check(
    tiny_model_dir: Path, trained_adapter: Path, tmp_path: Path
) -> None:
    """Loading an adapter onto a different base (other weights) is refused by the manifest check."""
    other = build_tiny_model(tmp_path / "other-base", pretrain_steps=5, seed=1)
    manifest = json.loads((trained_adapter / MANIFEST).read_text())
    tok = load_tokenizer(str(other))
    model = AutoModelForCausalLM.from_pretrained(str(other))
    with pytest.raises(ValueError, match="weights_hash does not match"):
        check_manifest_matches(manifest, str(other), model, tok)
    # ...and the loader every evaluation/export goes through runs that check before scoring anything.
    copy = tmp_path / "adapter"
    shutil.copytree(trained_adapter, copy)
    with pytest.raises(ValueError, match="does not match base model"):
        load_verified_adapter(load_config(base_model=str(other)), copy)


def test_report_writes_per_item_scores(report: ForgettingReport, tmp_path: Path) -> None:
    """The JSON artifact holds metrics, intervals and per-document scores for base and adapter."""
    data = json.loads(report.write(tmp_path / "f.json").read_text())
    assert data["metrics"]["forgetting_ppl_base"] == pytest.approx(report.comparison("general_suite_ppl").base.value)
    by_task = {c["task"]: c for c in data["comparisons"]}
    assert len(by_task["general_suite_ppl"]["adapter"]["values"]) == len(load_general_suite().texts)
    assert set(by_task["general_suite_mc"]["delta"]) == {"estimate", "low", "high", "confidence", "se"}
    assert torch.isfinite(torch.tensor(by_task["general_suite_ppl"]["adapter"]["values"])).all()
