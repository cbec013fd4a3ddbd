"""Batched token log-likelihood scoring, shared by training's eval loss and the forgetting check, and the
greedy decoding that evaluation's side-by-side answers and `lora-pipeline chat` share."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.chat_format import IGNORE_INDEX

# Head configs that change logits after the LM-head matmul (softcapping, scaling): such models keep their own
# forward wherever logits are computed in pieces.
HEAD_TRANSFORMS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


def pad_batch(
    seqs: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad (input_ids, labels) pairs into (B, T) input_ids, attention_mask and labels."""
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)  # (B, T)
    for row, (ids, lab) in enumerate(seqs):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        labels[row, : len(lab)] = torch.tensor(lab, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids.to(device), mask.to(device), labels.to(device)


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of the next token, 0 where the label is ignored; (B, T-1)."""
    shift_logits = logits[:, :-1, :].float()  # (B, T-1, V)
    shift_labels = labels[:, 1:]  # (B, T-1)
    nll = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.size(-1)),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return nll.view(shift_labels.shape)


# Most logit values one chunk of scored positions may hold (rows x vocabulary), so that scoring never builds
# the (B, T, V) logits of a whole batch: at a real vocabulary those, not the model, set the peak memory.
SCORE_CHUNK_ELEMENTS = 1 << 24


@torch.no_grad()
def sequence_nll(
    model: torch.nn.Module,
    seqs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
    chunk_elements: int = SCORE_CHUNK_ELEMENTS,
) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) for each sequence, in input order; batches sorted by length to pad less.

    Only positions whose next token is labelled go through the LM head, in chunks of at most
    `chunk_elements` logits (models whose head transforms its logits keep their own full forward).
    """
    was_training = model.training
    model.eval()
    causal_lm = model.get_base_model() if isinstance(model, PeftModel) else model
    # The head is applied in pieces only where logits are plain `lm_head(hidden)` of a separate body module.
    plain = plain_head(causal_lm) and causal_lm.base_model is not causal_lm
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask, labels = pad_batch([seqs[i] for i in idx], pad_id, device)
        if plain:
            sums = _scored_nll_sums(causal_lm, input_ids, mask, labels, chunk_elements)  # (B,)
        else:
            logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
            sums = token_nll(logits, labels).sum(dim=1)
        counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
        for row, i in enumerate(idx):
            out[i] = (float(sums[row]), int(counts[row]))
    model.train(was_training)
    return out


def chunk_rows(vocab_size: int, max_elements: int) -> int:
    """Rows per logits chunk so that one chunk's (rows, V) logits hold at most `max_elements` values."""
    return max(1, max_elements // vocab_size)


def plain_head(causal_lm: torch.nn.Module) -> bool:
    """Whether the model's logits are just `lm_head(last_hidden_state)` (no softcapping or scaling after it)."""
    config = causal_lm.config.get_text_config()
    return all(getattr(config, name, None) is None for name in HEAD_TRANSFORMS)


def _scored_nll_sums(
    causal_lm: torch.nn.Module,
    input_ids: torch.Tensor,  # (B, T)
    mask: torch.Tensor,  # (B, T)
    labels: torch.Tensor,  # (B, T)
    chunk_elements: int,
) -> torch.Tensor:
    """Per-row summed next-token NLL over labelled positions, the LM head applied in chunks of scored rows."""
    hidden = causal_lm.base_model(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
    scored = labels[:, 1:] != IGNORE_INDEX  # (B, T-1): the next token is labelled
    rows = scored.nonzero()[:, 0]  # (N,) batch row of each scored position, row-major
    hidden = hidden[:, :-1][scored]  # (N, C)
    targets = labels[:, 1:][scored]  # (N,)
    head = causal_lm.get_output_embeddings()
    step = chunk_rows(head.weight.size(0), chunk_elements)
    sums = torch.zeros(labels.size(0), dtype=torch.float32, device=labels.device)
    for begin in range(0, hidden.size(0), step):
        end = begin + step
        nll = F.cross_entropy(head(hidden[begin:end]).float(), targets[begin:end], reduction="none")  # (n,)
        sums.index_add_(0, rows[begin:end], nll)
    return sums


def mean_token_loss(scores: Sequence[tuple[float, int]]) -> float:
    """Token-weighted mean NLL over sequences."""
    total = sum(s for s, _ in scores)
    tokens = sum(n for _, n in scores)
    if tokens == 0:
        raise ValueError("no tokens to score")
    return total / tokens


def greedy_ids(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    ids: torch.Tensor,
    max_new_tokens: int,
    streamer: Any = None,
) -> torch.Tensor:
    """Greedy continuation of one (1, T) prompt; returns the (1, T + new) ids. `streamer` gets tokens as they come."""
    return model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        streamer=streamer,
    )
