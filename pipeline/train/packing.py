"""Padding-free batches: several examples per row, each keeping its own positions and attention.

A packed row concatenates examples; `position_ids` restart at 0 for every example. With no 2D
attention mask, transformers reads those restarts as sequence boundaries: for sdpa/eager it builds
a block-diagonal causal mask (`masking_utils.find_packed_sequence_indices`), and for flash-attention
with one row it calls the varlen kernel with `cu_seqlens` (no cross-example attention, no padding).
The tail of a row that is not full is padding with its own restarting positions and ignored labels,
so it is a separate block nobody attends to. The first label of every example is ignored, so the
last token of one example is never trained to predict the first token of the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from pipeline.chat_format import IGNORE_INDEX, Example


@dataclass(frozen=True)
class Batch:
    """One model input: (B, T) tensors plus counts for metrics."""

    input_ids: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T)
    position_ids: torch.Tensor | None  # (B, T); set for packed batches
    attention_mask: torch.Tensor | None  # (B, T); set for padded batches
    real_tokens: int  # non-pad input tokens
    slots: int  # B * T
    replay: torch.Tensor | None = None  # (B, T) bool: the token belongs to a replay row; None when none does

    @property
    def padding_fraction(self) -> float:
        return 1.0 - self.real_tokens / self.slots


def pack_rows(examples: Sequence[Example], capacity: int) -> list[list[Example]]:
    """First-fit decreasing: group examples into rows of at most `capacity` tokens (stable for equal lengths)."""
    too_long = [e.task_id for e in examples if len(e.input_ids) > capacity]
    if too_long:
        raise ValueError(f"examples longer than the packing row ({capacity} tokens): task ids {too_long[:20]}")
    rows: list[list[Example]] = []
    free: list[int] = []
    for ex in sorted(examples, key=lambda e: -len(e.input_ids)):
        n = len(ex.input_ids)
        for i, room in enumerate(free):
            if n <= room:
                rows[i].append(ex)
                free[i] -= n
                break
        else:
            rows.append([ex])
            free.append(capacity - n)
    return rows


def collate_packed(rows: Sequence[Sequence[Example]], pad_id: int, device: torch.device) -> Batch:
    """Packed rows -> input_ids, labels and per-example position_ids, right-padded to the longest row."""
    width = max(sum(len(e.input_ids) for e in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    replay = torch.zeros((len(rows), width), dtype=torch.bool)  # (B, T)
    real = 0
    for r, row in enumerate(rows):
        at = 0
        for ex in row:
            n = len(ex.input_ids)
            input_ids[r, at : at + n] = torch.tensor(ex.input_ids)
            replay[r, at : at + n] = ex.replay
            labels[r, at : at + n] = torch.tensor(ex.labels)
            labels[r, at] = IGNORE_INDEX  # never learn "next example's first token" across a boundary
            position_ids[r, at : at + n] = torch.arange(n)
            at += n
        real += at
        position_ids[r, at:] = torch.arange(width - at)  # padding tail: its own block, labels ignored
    return Batch(
        input_ids=input_ids.to(device),
        labels=labels.to(device),
        position_ids=position_ids.to(device),
        attention_mask=None,
        real_tokens=real,
        slots=len(rows) * width,
        replay=_replay_mask(replay, any(ex.replay for row in rows for ex in row), device),
    )


def collate_padded(examples: Sequence[Example], pad_id: int, device: torch.device) -> Batch:
    """One example per row, right-padded with an attention mask (the unpacked baseline)."""
    width = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    replay = torch.zeros((len(examples), width), dtype=torch.bool)  # (B, T)
    for r, ex in enumerate(examples):
        n = len(ex.input_ids)
        input_ids[r, :n] = torch.tensor(ex.input_ids)
        labels[r, :n] = torch.tensor(ex.labels)
        mask[r, :n] = 1
        replay[r, :n] = ex.replay
    real = sum(len(e.input_ids) for e in examples)
    return Batch(
        input_ids=input_ids.to(device),
        labels=labels.to(device),
        position_ids=None,
        attention_mask=mask.to(device),
        real_tokens=real,
        slots=len(examples) * width,
        replay=_replay_mask(replay, any(ex.replay for ex in examples), device),
    )


def _replay_mask(mask: torch.Tensor, any_replay: bool, device: torch.device) -> torch.Tensor | None:
    return mask.to(device) if any_replay else None


def make_batch(
    examples: Sequence[Example], *, packing: bool, capacity: int, pad_id: int, device: torch.device
) -> Batch:
    """The micro-batch's model input: packed rows of up to `capacity` tokens, or padded rows.

    With packing on, the padded layout is still used when it has fewer (B, T) slots: when examples are
    long relative to `capacity`, rows of 1-2 examples can leave more padding than padding them does.
    Both layouts compute the same losses (tested), so this is purely a cost choice."""
    if packing:
        rows = pack_rows(examples, capacity)
        packed_slots = len(rows) * max(sum(len(e.input_ids) for e in row) for row in rows)
        if packed_slots <= len(examples) * max(len(e.input_ids) for e in examples):
            return collate_packed(rows, pad_id, device)
    return collate_padded(examples, pad_id, device)
