"""The batched multi-LoRA forward (`pipeline.serve.multi_lora`) against PEFT's own forward, adapter by adapter.

A small random Llama in memory with three LoRA adapters of different ranks, scalings and target modules; a
batch mixing them with a base-only row must give each row the logits PEFT gives it alone (fp32, atol 1e-5),
also after adapters are added to and deleted from the stacks. Adapters the stack cannot run (DoRA, other
layer types) are reported and left to PEFT's path. Through the serving engine, mixed batches decode the same
greedy tokens through the stacks, through PEFT's path and one request at a time.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from pipeline.chat_format import load_tokenizer
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.serve.engine import BatchEngine, Generation
from pipeline.serve.multi_lora import BASE, MultiLora
from pipeline.train.modeling import load_base_model

ADAPTERS = {  # name -> (rank, alpha, target modules)
    "alpha": (2, 4.0, ["q_proj", "v_proj"]),
    "beta": (8, 8.0, ["q_proj", "k_proj", "v_proj", "o_proj"]),
    "gamma": (4, 16.0, ["v_proj", "gate_proj", "down_proj"]),
}


def _config(rank: int, alpha: float, targets: list[str], **extra: object) -> LoraConfig:
    return LoraConfig(
        r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False, lora_dropout=0.1, **extra
    )


def _add(model: PeftModel, name: str, config: LoraConfig, seed: int) -> None:
    torch.manual_seed(seed)
    model.add_adapter(name, config)
    with torch.no_grad():  # random B (init_lora_weights=False) big enough to move the logits
        for key, p in model.named_parameters():
            if f"lora_B.{name}." in key:
                p.mul_(0.5)


@pytest.fixture
def model() -> PeftModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    base = LlamaForCausalLM(config)
    rank, alpha, targets = ADAPTERS["alpha"]
    torch.manual_seed(1)
    peft_model = get_peft_model(base, _config(rank, alpha, targets), adapter_name="alpha")
    with torch.no_grad():
        for key, p in peft_model.named_parameters():
            if "lora_B.alpha." in key:
                p.mul_(0.5)
    for seed, name in enumerate(["beta", "gamma"], start=2):
        _add(peft_model, name, _config(*ADAPTERS[name]), seed)
    return peft_model.eval()


def _one_at_a_time(model: PeftModel, ids: torch.Tensor, adapters: list[str]) -> torch.Tensor:
    """Each row's logits from PEFT alone: its adapter active, or the adapters disabled for BASE."""
    rows = []
    for row, name in zip(ids, adapters, strict=True):
        if name == BASE:
            with model.disable_adapter():
                rows.append(model(input_ids=row[None]).logits)
        else:
            model.set_adapter(name)
            rows.append(model(input_ids=row[None]).logits)
    return torch.cat(rows)


def _batched(model: PeftModel, stacks: MultiLora, ids: torch.Tensor, adapters: list[str]) -> torch.Tensor:
    with stacks.rows(adapters, ids.device):
        return model(input_ids=ids).logits


@torch.no_grad()
def test_batched_forward_equals_peft_adapter_by_adapter(model: PeftModel) -> None:
    adapters = ["alpha", "beta", BASE, "gamma", "beta", "alpha"]
    ids = torch.randint(0, 97, (len(adapters), 7), generator=torch.Generator().manual_seed(0))
    expected = _one_at_a_time(model, ids, adapters)
    stacks = MultiLora(model)
    assert stacks.slot == {"alpha": 1, "beta": 2, "gamma": 3} and stacks.supports(adapters)
    got = _batched(model, stacks, ids, adapters)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # the adapters really differ per row (the comparison is not vacuous), and PEFT's paths are unchanged
    assert (expected[0] - expected[2]).abs().max() > 1e-2 and (expected[1] - expected[3]).abs().max() > 1e-2
    torch.testing.assert_close(_one_at_a_time(model, ids, adapters), expected, atol=0, rtol=0)
    torch.testing.assert_close(model(input_ids=ids, adapter_names=adapters).logits, expected, atol=1e-5, rtol=0)


@torch.no_grad()
def test_peft_weights_are_views_of_the_stacks(model: PeftModel) -> None:
    stacks = MultiLora(model)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    stack = layer.forward.stack
    # slots: base, alpha, beta, gamma (gamma has no q_proj: zeros); rank 8, beta's
    assert stack.a.shape == (4, 8, 32) and stack.b.shape == (4, 32, 8)
    assert stack.a[0].abs().sum() == 0 and stack.a[3].abs().sum() == 0
    assert layer.lora_A["alpha"].weight.untyped_storage().data_ptr() == stack.a.untyped_storage().data_ptr()
    assert layer.lora_B["beta"].weight.untyped_storage().data_ptr() == stack.b.untyped_storage().data_ptr()
    assert stacks.slots is None


@torch.no_grad()
def test_hot_swap_adds_and_evicts_from_the_stacks(model: PeftModel) -> None:
    stacks = MultiLora(model)
    ids = torch.randint(0, 97, (5, 6), generator=torch.Generator().manual_seed(1))

    _add(model, "delta", _config(16, 8.0, ["k_proj", "up_proj"]), seed=7)  # a larger rank: every stack grows
    model.eval()
    stacks.rebuild()
    adapters = ["delta", "alpha", BASE, "gamma", "delta"]
    assert stacks.supports(adapters)
    torch.testing.assert_close(
        _batched(model, stacks, ids, adapters), _one_at_a_time(model, ids, adapters), atol=1e-5, rtol=0
    )

    model.delete_adapter("beta")  # evicted: its slot goes, the others move down
    stacks.rebuild()
    assert stacks.slot == {"alpha": 1, "gamma": 2, "delta": 3} and not stacks.supports(["beta", "alpha"])
    adapters = ["gamma", "delta", "alpha", BASE, "alpha"]
    torch.testing.assert_close(
        _batched(model, stacks, ids, adapters), _one_at_a_time(model, ids, adapters), atol=1e-5, rtol=0
    )


@torch.no_grad()
def test_dora_and_other_layer_types_fall_back_to_peft(model: PeftModel, caplog: pytest.LogCaptureFixture) -> None:
    stacks = MultiLora(model)
    with caplog.at_level(logging.INFO, logger="pipeline.serve.multi_lora"):
        _add(model, "dora", _config(4, 8.0, ["q_proj", "v_proj"], use_dora=True), seed=5)
        model.eval()
        stacks.rebuild()
    assert stacks.unsupported == {"dora": "DoRA (use_dora)"}
    assert "adapter dora: its mixed batches run through PEFT's per-adapter path (DoRA (use_dora))" in caplog.text
    assert stacks.supports(["alpha", BASE, "gamma"]) and not stacks.supports(["alpha", "dora"])
    adapters = ["alpha", BASE, "gamma"]  # a DoRA adapter loaded beside them changes nothing for the others
    ids = torch.randint(0, 97, (3, 5), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(
        _batched(model, stacks, ids, adapters), _one_at_a_time(model, ids, adapters), atol=1e-5, rtol=0
    )

    _add(model, "emb", _config(4, 8.0, ["embed_tokens"]), seed=6)  # a lora.Embedding: the stack cannot run it
    model.eval()
    stacks.rebuild()
    assert stacks.blocker == "adapter layers the stack cannot run: Embedding"
    assert not stacks.supports(["alpha", "gamma"])


# The engine: mixed batches decode the same tokens through the stacks as through PEFT and one at a time. -----


def _save_adapter(base_dir: Path, out: Path, config: LoraConfig, seed: int) -> Path:
    torch.manual_seed(seed)
    model = get_peft_model(load_base_model(str(base_dir), torch.device("cpu")), config)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if "lora_B" in key:
                p.mul_(0.5)
    model.save_pretrained(out)
    return out


def _decode(engine: BatchEngine, ids: list[list[int]], adapters: list[str]) -> list[list[int]]:
    gens = [
        Generation(x, a, 6, lambda _: None, lambda *_: None, lambda e: None, stop_at_eos=False)
        for x, a in zip(ids, adapters, strict=True)
    ]
    engine.generate(gens)
    return [g.new_ids for g in gens]


@pytest.mark.filterwarnings("ignore:`lora_bias=True`:UserWarning", "ignore:.*invalid shape:UserWarning")
def test_engine_mixed_batches_decode_as_peft_and_one_at_a_time(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir = build_tiny_model(tmp_path / "base", pretrain_steps=1, seed=0)
    tok = load_tokenizer(str(base_dir))
    dirs = {
        name: _save_adapter(base_dir, tmp_path / name, _config(*spec), seed)
        for seed, (name, spec) in enumerate(ADAPTERS.items())
    }
    dirs["bias"] = _save_adapter(base_dir, tmp_path / "bias", _config(4, 8.0, ["q_proj"], lora_bias=True), 9)
    engines = {
        stacked: BatchEngine(load_base_model(str(base_dir), torch.device("cpu")), tok, multi_lora=stacked)
        for stacked in (True, False)
    }
    for engine in engines.values():
        for name, d in dirs.items():
            engine.add_adapter(name, d)
    batched = []
    monkeypatch.setattr(MultiLora, "rows", _counting(MultiLora.rows, batched))
    prompts = ["hi", "Write a haiku about tea", "When does the first ferry leave on Sunday?", "ok", "tea"]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    try:
        adapters = ["alpha", "beta", BASE, "gamma", "alpha"]
        got = _decode(engines[True], ids, adapters)
        assert len(batched) == 6  # prefill + 5 decoding steps, all through the stacks
        assert got == _decode(engines[False], ids, adapters)
        assert got == [_decode(engines[True], [x], [a])[0] for x, a in zip(ids, adapters, strict=True)]
        assert len({tuple(t) for t in got}) > 2  # the adapters answer differently

        with caplog.at_level(logging.INFO, logger="pipeline.serve.engine"):
            adapters = ["bias", "alpha", BASE, "gamma", "beta"]  # an adapter the stacks cannot run: PEFT's path
            batched.clear()
            assert _decode(engines[True], ids, adapters) == _decode(engines[False], ids, adapters)
        assert not batched
        assert "mixed batch through PEFT's per-adapter path: bias: a LoRA bias (lora_bias)" in caplog.text

        for engine in engines.values():  # evicted: the others keep their answers
            engine.delete_adapter("beta")
        adapters = ["gamma", "alpha", BASE, "gamma", "alpha"]
        batched.clear()
        got = _decode(engines[True], ids, adapters)
        assert batched and got == _decode(engines[False], ids, adapters)
    finally:
        for engine in engines.values():
            engine.close()


def _counting(rows: Any, calls: list[int]) -> Any:
    def counted(self: MultiLora, adapters: list[str], device: torch.device) -> Any:
        calls.append(len(adapters))
        return rows(self, adapters, device)

    return counted
