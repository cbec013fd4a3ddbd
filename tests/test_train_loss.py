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


def _reference_mixed(
    model: torch.nn.Module, inputs: dict[str, torch.Tensor], replay: torch.Tensor, loss: str, weight: float
) -> torch.Tensor:
    """Full-logits reference: cross-entropy at task positions, `loss` (ce or KL(base || adapter)) x weight at replay."""
    model_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids")}
    logp = F.log_softmax(model(**model_inputs, use_cache=False).logits[inputs["scored"]].float(), dim=-1)
    ce = F.nll_loss(logp, inputs["targets"], reduction="none")  # (N,)
    per = ce
    if loss == "kl":
        with torch.no_grad(), model.disable_adapter():
            base = F.log_softmax(model(**model_inputs, use_cache=False).logits[inputs["scored"]].float(), dim=-1)
        per = torch.where(replay, (base.exp() * (base - logp)).sum(-1), ce)
    return (per * torch.where(replay, weight, 1.0)).sum()


@pytest.mark.parametrize(
    ("loss", "weight", "rows_per_chunk", "softcap"),
    [("kl", 1.0, 3, False), ("kl", 0.3, 100_000, False), ("ce", 0.3, 3, False), ("kl", 0.5, 0, True)],
)
@pytest.mark.parametrize("where", ["every_third_position", "last_row_only"])
def test_replay_positions_get_the_replay_loss_and_weight(
    tiny_model_dir: Path, loss: str, weight: float, rows_per_chunk: int, softcap: bool, where: str
) -> None:
    """Replay positions: KL(base || adapter) or cross-entropy, times train.replay.weight; task positions plain
    cross-entropy. Same value and LoRA gradients as the full-logits reference, chunked or through the model's
    own forward (a softcapped head)."""
    model, inputs = _lora_model_and_batch(tiny_model_dir)
    if softcap:
        model.get_base_model().config.final_logit_softcapping = 30.0
    vocab = model.get_base_model().config.vocab_size
    n = inputs["targets"].numel()
    if where == "every_third_position":
        replay = torch.arange(n) % 3 == 0  # (N,) a third of the scored positions, in every row
    else:  # one row's positions: the base's forward skips the other rows
        row_of = inputs["scored"].nonzero()[:, 0]  # (N,)
        replay = row_of == row_of.max()
        assert 0 < int(replay.sum()) < n
    ref_loss, ref_grads = _loss_and_grads(_reference_mixed(model, inputs, replay, loss, weight), model)
    loss_model = ScoredTokenLoss(
        model, chunk_elements=max(rows_per_chunk, 1) * vocab, replay_loss=loss, replay_weight=weight
    )
    assert loss_model.chunked != softcap
    got, grads = _loss_and_grads(loss_model(**inputs, replay=replay), model)
    assert got == pytest.approx(ref_loss, rel=1e-5)
    plain, _ = _loss_and_grads(loss_model(**inputs), model)  # no replay positions: plain cross-entropy
    assert plain != pytest.approx(got, rel=1e-3)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5 * float(ref_grads[name].abs().max()))


def test_kl_replay_is_zero_at_the_base(tiny_model_dir: Path) -> None:
    """A fresh adapter (LoRA B = 0) is the base: the KL replay loss and its gradient are zero; cross-entropy is not."""
    model, inputs = _lora_model_and_batch(tiny_model_dir)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.zero_()
    replay = torch.ones_like(inputs["targets"], dtype=torch.bool)
    kl_model = ScoredTokenLoss(model, chunk_elements=2**24, replay_loss="kl")
    ce_model = ScoredTokenLoss(model, chunk_elements=2**24, replay_loss="ce")
    kl, kl_grads = _loss_and_grads(kl_model(**inputs, replay=replay), model)
    ce, ce_grads = _loss_and_grads(ce_model(**inputs, replay=replay), model)
    assert abs(kl) < 1e-4 * replay.numel() and ce > 1.0 * replay.numel()
    # Float noise only: under a thousandth of the cross-entropy's gradient.
    largest = max(float(g.abs().max()) for g in ce_grads.values())
    assert max(float(g.abs().max()) for g in kl_grads.values()) < 1e-3 * largest
