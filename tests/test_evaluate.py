"""Forgetting check on the tiny model: sound base scores, honest deltas, and the silent-failure guards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from pipeline.config import load_config
from pipeline.evaluate import (
    AdapterNotAppliedError,
    check_manifest_matches,
    evaluate_saved_adapter,
    forgetting_check,
    score_suite,
)
from pipeline.general_suite import load_general_suite
from pipeline.modeling import load_tokenizer
from pipeline.tiny_model import build_tiny_model
from pipeline.train import MANIFEST, train_adapter
from tests.conftest import make_records


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


def test_overtrained_adapter_shows_forgetting(tiny_model_dir: Path, trained_adapter: Path) -> None:
    """The base knows its general suite; an adapter over-trained on ferry data scores worse on it."""
    cfg = load_config(base_model=str(tiny_model_dir))
    report = evaluate_saved_adapter(cfg, trained_adapter)
    m = report.metrics()
    assert m["forgetting_mc_acc_base"] > 0.8  # the tiny base was pretrained on the suite
    assert m["forgetting_ppl_delta"] > 0 and m["forgetting_ppl_adapter"] > m["forgetting_ppl_base"]
    assert m["forgetting_mc_acc_delta"] == pytest.approx(m["forgetting_mc_acc_adapter"] - m["forgetting_mc_acc_base"])
    assert len(report.base.mc_correct) == len(load_general_suite().mc_items)  # per-item scores kept


def test_untrained_adapter_trips_the_applied_guard(tiny_model_dir: Path) -> None:
    """A fresh LoRA adapter (B = 0) changes nothing: the check refuses to report base-vs-base as a result."""
    tok = load_tokenizer(str(tiny_model_dir))
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(AdapterNotAppliedError, match="identical logits"):
        forgetting_check(model, tok, load_general_suite(), batch_size=16)


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
    # ...and the evaluation entry point runs that check before scoring anything.
    copy = tmp_path / "adapter"
    shutil.copytree(trained_adapter, copy)
    with pytest.raises(ValueError, match="does not match base model"):
        evaluate_saved_adapter(load_config(base_model=str(other)), copy)


def test_report_writes_per_item_scores(tiny_model_dir: Path, trained_adapter: Path, tmp_path: Path) -> None:
    """The JSON artifact holds metrics and per-item scores for base and adapter."""
    report = evaluate_saved_adapter(load_config(base_model=str(tiny_model_dir)), trained_adapter)
    data = json.loads(report.write(tmp_path / "f.json").read_text())
    assert data["metrics"]["forgetting_ppl_base"] == pytest.approx(report.base.perplexity)
    assert len(data["adapter"]["text_nll"]) == len(load_general_suite().texts)
    assert torch.isfinite(torch.tensor(data["adapter"]["text_nll"])).all()
