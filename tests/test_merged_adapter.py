"""The adapter side scored merged: same function as unmerged, base weights restored bit for bit, refused where unsafe."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from pipeline.evaluate.merged_adapter import merge_refusal, merged_adapter

IDS = torch.tensor([[1, 17, 230, 41, 99, 5, 801, 64], [1, 300, 2, 9, 77, 410, 12, 3]])  # (2, 8)


def _adapted(tiny: Path, **lora: object) -> PeftModel:
    """The tiny base with a LoRA adapter whose B matrices are non-zero, in eval mode."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny))
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM", **lora)  # type: ignore[arg-type]
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    return model.eval()


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def test_merged_scores_equal_unmerged_and_the_base_comes_back_bit_for_bit(tiny_model_dir: Path) -> None:
    model = _adapted(tiny_model_dir)
    before = _state(model)
    unmerged = model(input_ids=IDS).logits
    with model.disable_adapter():
        base = model(input_ids=IDS).logits
    with merged_adapter(model) as merged:
        assert merged
        q = model.base_model.model.model.layers[0].self_attn.q_proj
        assert q.merged and not torch.equal(
            q.base_layer.weight, before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
        )
        inside = model(input_ids=IDS).logits
    assert (inside - unmerged).abs().max() < 1e-5  # the same function, up to float rounding
    assert (inside - base).abs().max() > 1e-2  # and not the base's
    after = _state(model)
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(m.merged for m in model.modules() if hasattr(m, "merged"))
    assert torch.equal(model(input_ids=IDS).logits, unmerged)


@torch.no_grad()
def test_weights_are_restored_after_an_error_inside(tiny_model_dir: Path) -> None:
    model = _adapted(tiny_model_dir)
    before = _state(model)
    with pytest.raises(RuntimeError, match="boom"), merged_adapter(model) as merged:
        assert merged
        raise RuntimeError("boom")
    after = _state(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda m: m.train(), "training mode"),
        (lambda m: m.to(torch.bfloat16), "bfloat16 weights"),
    ],
)
def test_merging_is_refused_where_it_would_change_the_function(
    tiny_model_dir: Path, change: object, reason: str
) -> None:
    model = _adapted(tiny_model_dir)
    change(model)  # type: ignore[operator]
    assert reason in (merge_refusal(model) or "")
    before = _state(model)
    with merged_adapter(model) as merged:
        assert not merged
        assert not any(m.merged for m in model.modules() if hasattr(m, "merged"))
    after = _state(model)
    assert all(torch.equal(after[k], before[k]) for k in before)


@pytest.mark.parametrize(
    ("lora", "reason"),
    [({"use_dora": True}, "LoRA variant"), ({"lora_bias": True}, "no bias to merge it into")],
)
@pytest.mark.filterwarnings("ignore:`lora_bias=True` was passed")  # PEFT's own warning for the same case
def test_adapters_peft_cannot_merge_as_w_plus_ba_are_scored_unmerged(
    tiny_model_dir: Path, lora: dict[str, bool], reason: str
) -> None:
    model = _adapted(tiny_model_dir, **lora)
    assert reason in (merge_refusal(model) or "")
    with merged_adapter(model) as merged:
        assert not merged


def test_a_plain_float32_lora_merges(tiny_model_dir: Path) -> None:
    assert merge_refusal(_adapted(tiny_model_dir)) is None
