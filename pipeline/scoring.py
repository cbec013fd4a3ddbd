"""Batched token log-likelihood scoring, shared by training's eval loss and the forgetting check."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pipeline.formatting import IGNORE_INDEX


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


@torch.no_grad()
def sequence_nll(
    model: torch.nn.Module,
    seqs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    batch_size: int,
    device: torch.device,
) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) for each sequence, in input order; batches sorted by length to pad less."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    out: list[tuple[float, int]] = [(0.0, 0)] * len(seqs)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        input_ids, mask, labels = pad_batch([seqs[i] for i in idx], pad_id, device)
        logits = model(input_ids=input_ids, attention_mask=mask).logits  # (B, T, V)
        nll = token_nll(logits, labels)  # (B, T-1)
        counts = (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)
        for row, i in enumerate(idx):
            out[i] = (float(nll[row].sum()), int(counts[row]))
    model.train(was_training)
    return out


def mean_token_loss(scores: Sequence[tuple[float, int]]) -> float:
    """Token-weighted mean NLL over sequences."""
    total = sum(s for s, _ in scores)
    tokens = sum(n for _, n in scores)
    if tokens == 0:
        raise ValueError("no tokens to score")
    return total / tokens
