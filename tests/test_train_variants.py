"""LoRA variants, optimization switches and per-step / per-run metrics of the training recipe."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from pipeline.chat_format import build_examples, load_tokenizer
from pipeline.config import LoraConfig, PipelineConfig, load_config
from pipeline.train.recipe import train_adapter
from tests.conftest import make_records


def _config(model_dir: Path, lora: dict | None = None, **train: object) -> PipelineConfig:
    return load_config(
        base_model=str(model_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "qv", **(lora or {})},
        train={"learning_rate": 5e-3, "epochs": 1, "batch_size": 4, "seed": 0, "device": "cpu", **train},
    )


@pytest.mark.parametrize(
    ("knob", "value", "message"),
    [
        ("r", 0, "r"),
        ("dropout", 1.0, "dropout"),
        ("target_modules", "q-only", r"lora.target_modules='q-only' is not a preset"),
        ("quantize", "int3", "quantize"),
        ("use_dora", "sometimes", "use_dora"),
    ],
)
def test_lora_knobs_are_validated_at_construction(knob: str, value: object, message: str) -> None:
    """Bad values fail when the config is built, and the error names the knob."""
    with pytest.raises(ValidationError, match=message):
        LoraConfig(**{knob: value})


def test_qlora_is_refused_on_cpu_with_a_clear_message(tiny_model_dir: Path, tmp_path: Path) -> None:
    """4-bit NF4 needs bitsandbytes on CUDA: on CPU the run stops naming lora.quantize, before loading the model."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    cfg = _config(tiny_model_dir, lora={"quantize": "nf4"})
    with pytest.raises(ValueError, match=r"lora.quantize='nf4' \(QLoRA\) needs a CUDA device"):
        train_adapter(cfg, make_records(4), make_records(4).iloc[:0], tmp_path / "x")


@pytest.mark.parametrize(
    ("lora", "expect_key"),
    [
        ({"use_dora": True}, "lora_magnitude_vector"),
        ({"use_rslora": True}, "lora_A"),
        ({"target_modules": ["o_proj"]}, "o_proj"),
    ],
)
def test_dora_rslora_and_explicit_targets_train(
    tiny_model_dir: Path, tmp_path: Path, lora: dict, expect_key: str
) -> None:
    """DoRA adds magnitude vectors, rsLoRA changes the scaling, an explicit list picks its modules; all train."""
    records = make_records(8)
    result = train_adapter(_config(tiny_model_dir, lora, max_steps=2), records, records.iloc[:0], tmp_path / "a")
    weights = load_file(tmp_path / "a" / "adapter_model.safetensors")
    assert any(expect_key in k for k in weights), sorted(weights)[:5]
    assert result.steps == 2 and all(math.isfinite(h.loss) for h in result.history)
    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["use_dora"] == lora.get("use_dora", False)
    assert saved["use_rslora"] == lora.get("use_rslora", False)


def test_gradient_checkpointing_and_padding_give_the_same_losses(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Recomputed activations and padded (unpacked) batches change memory/speed, not the math."""
    records = make_records(16)
    ref = train_adapter(_config(tiny_model_dir, max_steps=3), records, records.iloc[:0], tmp_path / "ref")
    gc = train_adapter(
        _config(tiny_model_dir, max_steps=3, gradient_checkpointing=True), records, records.iloc[:0], tmp_path / "gc"
    )
    padded = train_adapter(
        _config(tiny_model_dir, max_steps=3, packing=False), records, records.iloc[:0], tmp_path / "pad"
    )
    losses = [h.loss for h in ref.history]
    assert [h.loss for h in gc.history] == pytest.approx(losses, rel=1e-5)
    assert [h.loss for h in padded.history] == pytest.approx(losses, rel=1e-5)
    assert all(p.padding_fraction >= r.padding_fraction for p, r in zip(padded.history, ref.history, strict=True))
    assert sum(p.padding_fraction for p in padded.history) > sum(r.padding_fraction for r in ref.history)


def test_step_and_run_metrics(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Per step: loss, lr, grad norm, tokens/s, padding fraction, eval loss every N; per run: memory, size, share."""
    records = make_records(20)
    seen: list = []
    cfg = _config(tiny_model_dir, eval_every_steps=2, warmup_fraction=0.5)
    result = train_adapter(cfg, records.iloc[:16], records.iloc[16:], tmp_path / "a", on_step=seen.append)
    assert seen == result.history and [h.step for h in seen] == [1, 2, 3, 4]
    assert seen[0].learning_rate == 0.0 < seen[1].learning_rate < seen[2].learning_rate  # linear warmup over 2 steps
    assert seen[3].learning_rate < seen[2].learning_rate  # then cosine decay
    assert all(h.grad_norm > 0 and h.tokens_per_s > 0 and 0 <= h.padding_fraction < 1 for h in seen)
    evaluated = [h.step for h in seen if not math.isnan(h.eval_loss)]
    assert evaluated == [2, 4]  # every 2 steps; step 4 is also the epoch's end
    assert result.eval_loss == seen[-1].eval_loss
    assert result.tokens_per_s > 0 and result.manifest["train_examples"] == 16
    assert result.peak_memory_bytes > 50 * 1024**2  # process RSS on CPU
    assert result.adapter_bytes == (tmp_path / "a" / "adapter_model.safetensors").stat().st_size > 0
    assert 0 < result.trainable_share < 0.1
    assert result.mfu is None  # MFU is reported on CUDA only


def test_examples_without_a_loss_token_stop_the_run_naming_rows(tiny_model_dir: Path) -> None:
    """A template that renders no response, with no EOS to learn, leaves nothing to train on: refused by task id."""
    tok = load_tokenizer(str(tiny_model_dir))
    tok.chat_template = "{% for m in messages %}{% if m['role'] == 'user' %}{{ m['content'] }}{% endif %}{% endfor %}"
    tok.eos_token = None
    with pytest.raises(ValueError, match=r"3 examples have no response token to learn from \(task ids \[1, 2, 3\]\)"):
        build_examples(tok, make_records(3), max_length=256)
