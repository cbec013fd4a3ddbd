"""The real training recipe on the offline tiny model: labels, determinism, accumulation, saved adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from pipeline.chat_format import FALLBACK_CHAT_TEMPLATE, IGNORE_INDEX, build_examples, encode_pair, load_tokenizer
from pipeline.config import PipelineConfig, load_config
from pipeline.train.manifest import MANIFEST
from pipeline.train.recipe import plan_steps, train_adapter
from tests.conftest import make_records


def _config(model_dir: Path, **train: object) -> PipelineConfig:
    return load_config(
        base_model=str(model_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"},
        train={"learning_rate": 5e-3, "epochs": 2, "batch_size": 8, "seed": 0, **train},
    )


def test_labels_cover_only_the_response_and_eos(tiny_model_dir: Path) -> None:
    """Prompt and template tokens are masked; the response decodes back exactly, followed by EOS."""
    tok = load_tokenizer(str(tiny_model_dir))
    row = next(make_records(1).itertuples(index=False))
    ex = encode_pair(tok, row)
    learned = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert learned[-1] == tok.eos_token_id
    assert tok.decode(learned[:-1]) == row.response
    assert ex.labels[0] == IGNORE_INDEX and len(learned) < len(ex.input_ids)


def test_fallback_template_for_tokenizers_without_one(tiny_model_dir: Path) -> None:
    """A base without a chat template uses the documented fallback, still masking the prompt."""
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = None
    row = next(make_records(1).itertuples(index=False))
    ex = encode_pair(tok, row)
    assert "### Assistant:" in FALLBACK_CHAT_TEMPLATE
    assert "### Assistant:" in tok.decode(ex.input_ids)
    learned = [t for t, lab in zip(ex.input_ids, ex.labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(learned[:-1]).strip() == row.response


def test_too_long_rows_stop_the_run_naming_task_ids(tiny_model_dir: Path) -> None:
    """Rows over max_length are never truncated silently: the error lists their task ids."""
    tok = load_tokenizer(str(tiny_model_dir))
    records = make_records(4)
    records.loc[2, "response"] = "word " * 400 + "end"
    with pytest.raises(ValueError, match=r"exceed data.max_length=200 tokens \(task ids \[3\]\)"):
        build_examples(tok, records, max_length=200)


def test_training_lowers_loss_and_saves_a_loadable_adapter(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Loss falls, the PEFT directory holds safetensors + config + manifest, and PeftModel loads it."""
    records = make_records(48)
    cfg = _config(tiny_model_dir)
    result = train_adapter(cfg, records.iloc[:40], records.iloc[40:], tmp_path / "adapter", dataset_hash="abc")
    assert result.steps == plan_steps(40, cfg)[1] == 10
    first, last = result.history[0].loss, result.history[-1].loss
    assert last < first * 0.8, (first, last)
    assert result.eval_loss == result.eval_loss  # not NaN
    assert {"adapter_model.safetensors", "adapter_config.json", MANIFEST} <= {
        p.name for p in (tmp_path / "adapter").iterdir()
    }
    manifest = json.loads((tmp_path / "adapter" / MANIFEST).read_text())
    assert manifest["dataset_hash"] == "abc" and manifest["config"]["lora"]["r"] == 4
    assert manifest["base_model"]["weights_hash"] and manifest["base_model"]["chat_template_hash"]
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == result.trainable_params


def test_training_is_deterministic_on_cpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Same seed, same data: identical per-step losses and identical adapter weights."""
    records = make_records(24)
    cfg = _config(tiny_model_dir, max_steps=4)
    a = train_adapter(cfg, records, records.iloc[:0], tmp_path / "a")
    b = train_adapter(cfg, records, records.iloc[:0], tmp_path / "b")
    assert [h.loss for h in a.history] == [h.loss for h in b.history]
    from safetensors.torch import load_file

    wa, wb = (
        load_file(tmp_path / "a" / "adapter_model.safetensors"),
        load_file(tmp_path / "b" / "adapter_model.safetensors"),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_gradient_accumulation_equals_one_large_batch(tiny_model_dir: Path, tmp_path: Path) -> None:
    """batch 4 x accum 2 gives the same step loss as batch 8 x accum 1 (loss normalized by the group's tokens)."""
    records = make_records(16)
    big = train_adapter(_config(tiny_model_dir, batch_size=8, max_steps=1), records, records.iloc[:0], tmp_path / "a")
    acc = train_adapter(
        _config(tiny_model_dir, batch_size=4, grad_accum_steps=2, max_steps=1),
        records,
        records.iloc[:0],
        tmp_path / "b",
    )
    assert acc.history[0].loss == pytest.approx(big.history[0].loss, rel=1e-5)


def test_empty_training_set_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    """No rows left after validation stops the run with a clear error, before loading the model."""
    empty = make_records(2).iloc[:0]
    with pytest.raises(ValueError, match="no training rows"):
        train_adapter(_config(tiny_model_dir), empty, empty, tmp_path / "x")


def test_cuda_requested_without_a_gpu_is_an_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    """device=cuda on a CPU-only machine fails naming the knob instead of silently using the CPU."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match=r"train\.device='cuda'"):
        train_adapter(_config(tiny_model_dir, device="cuda"), make_records(4), pd.DataFrame(), tmp_path / "x")
