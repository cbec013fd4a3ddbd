"""The training loss: summed next-token cross-entropy at the scored positions only, logits in chunks.

Logits are the largest activation of LoRA training at a real vocabulary: (tokens, V) floats, plus their
log-softmax and gradient, against a (tokens, hidden) hidden state. So only positions whose next token is a
response token go through the LM head, and they go in chunks of rows whose logits are dropped after the
forward and recomputed in the backward (activation checkpointing): at most one chunk's (rows, V) logits,
log-softmax and gradient exist at a time, whatever the batch. The recompute costs one more LM-head matmul
per scored token, so a batch that fits in one chunk skips it. The loss is the same sum as one `cross_entropy` over all scored rows (up to float
summation order).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from peft import PeftModel
from torch.utils.checkpoint import checkpoint

from pipeline.train.scoring import chunk_rows, plain_head


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")  # logits (rows, V) upcast for the softmax


class ScoredTokenLoss(torch.nn.Module):
    """The PEFT causal LM with the loss attached, so that DDP wraps (and syncs) one forward that returns the loss.

    `forward` returns the summed cross-entropy of `targets` (N,) at the `scored` (B, T) positions, row-major."""

    def __init__(self, model: PeftModel, *, chunk_elements: int) -> None:
        super().__init__()
        self.model = model
        self.chunked = plain_head(model.get_base_model())
        self.rows = chunk_rows(model.get_base_model().config.get_text_config().vocab_size, chunk_elements)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None,  # (B, T)
        position_ids: torch.Tensor | None,  # (B, T)
        scored: torch.Tensor,  # (B, T) bool: the next token is a response token
        targets: torch.Tensor,  # (N,)
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        if not self.chunked:
            # use_cache=False: with a cache, transformers ignores packed position ids
            logits = self.model(**inputs, logits_to_keep=scored, use_cache=False).logits  # (N, V)
            return F.cross_entropy(logits.float(), targets, reduction="sum")
        causal_lm = self.model.get_base_model()  # LoRA layers are injected in place, so this still trains them
        hidden = causal_lm.base_model(**inputs, use_cache=False).last_hidden_state  # (B, T, C)
        hidden = hidden[scored]  # (N, C), row-major like `targets`
        head = causal_lm.get_output_embeddings()
        if hidden.size(0) <= self.rows:
            # One chunk: nothing would be freed before its own backward, so recomputing it would be pure cost.
            return _chunk_loss(head, hidden, targets)
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, hidden.size(0), self.rows):
            end = start + self.rows
            total = total + checkpoint(_chunk_loss, head, hidden[start:end], targets[start:end], use_reentrant=False)
        return total
