"""The chunked scored-token loss equals the plain full-logits loss, value and LoRA gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from pipeline.chat_format import IGNORE_INDEX, build_examples, load_tokenizer
from pipeline.config import LoraConfig
from pipeline.train.loss import ScoredTokenLoss
from pipeline.train.modeling import attach_lora, load_base_model
from pipeline.train.packing import make_batch
from tests.conftest import make_records

CPU = torch.device("cpu")


def _lora_model_and_batch(model_dir: Path) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    tok = load_tokenizer(str(model_dir))
    records = make_records(10)
    records["response"] = [" ".join([r] * (1 + i % 3)) for i, r in enumerate(records["response"])]
    examples = build_examples(tok, records, max_length=512)
    batch = make_batch(examples, packing=True, capacity=512, pad_id=int(tok.pad_token_id), device=CPU)
    torch.manual_seed(0)
    model = attach_lora(
        load_base_model(str(model_dir), CPU), LoraConfig(r=8, dropout=0.0), gradient_checkpointing=False
    )
    # LoRA B starts at zero; give it values so that the gradients reach both LoRA matrices.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    scored = torch.zeros_like(batch.labels, dtype=torch.bool)  # (B, T)
    scored[:, :-1] = batch.labels[:, 1:] != IGNORE_INDEX
    inputs = {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
        "scored": scored,
        "targets": batch.labels[:, 1:][scored[:, :-1]],
    }
    return model, inputs


def _loss_and_grads(loss: torch.Tensor, model: torch.nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


@pytest.mark.parametrize("rows_per_chunk", [3, 64, 100_000])
def test_chunked_loss_equals_full_logits_loss(tiny_model_dir: Path, rows_per_chunk: int) -> None:
    """Chunks of 3 rows, 64 rows, or all rows at once: same summed loss and LoRA gradients as full logits."""
    model, inputs = _lora_model_and_batch(tiny_model_dir)
    vocab = model.get_base_model().config.vocab_size
    model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**model_inputs, use_cache=False).logits  # (B, T, V)
    full = F.cross_entropy(logits[inputs["scored"]], inputs["targets"], reduction="sum")
    ref_loss, ref_grads = _loss_and_grads(full, model)

    loss_model = ScoredTokenLoss(model, chunk_elements=rows_per_chunk * vocab)
    assert loss_model.chunked and loss_model.rows == rows_per_chunk
    assert inputs["targets"].numel() > 3 * 64  # several chunks at 3 and 64 rows
    loss, grads = _loss_and_grads(loss_model(**inputs), model)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    for name, g in grads.items():
        # Summation order differs (chunks vs one matmul): allow float noise relative to the gradient's scale.
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5 * float(ref_grads[name].abs().max()))


def test_models_that_transform_logits_keep_their_own_forward(tiny_model_dir: Path) -> None:
    """A head with softcapping is not chunked (the plain matmul would skip the cap); the model's forward is used."""
    model, inputs = _lora_model_and_batch(tiny_model_dir)
    model.get_base_model().config.final_logit_softcapping = 30.0
    loss_model = ScoredTokenLoss(model, chunk_elements=2**24)
    assert not loss_model.chunked
    model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logits = model(**model_inputs, logits_to_keep=inputs["scored"], use_cache=False).logits  # (N, V)
    expected = F.cross_entropy(logits, inputs["targets"], reduction="sum")
    assert float(loss_model(**inputs)) == pytest.approx(float(expected), rel=1e-6)
