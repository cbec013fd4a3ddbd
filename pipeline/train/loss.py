"""The training loss: summed next-token loss at the scored positions only, logits in chunks.

Logits are the largest activation of LoRA training at a real vocabulary: (tokens, V) floats, plus their
log-softmax and gradient, against a (tokens, hidden) hidden state. So only positions whose next token is a
response token go through the LM head, and they go in chunks of rows whose logits are dropped after the
forward and recomputed in the backward (activation checkpointing): at most one chunk's (rows, V) logits,
log-softmax and gradient exist at a time, whatever the batch. The recompute costs one more LM-head matmul
per scored token, so a batch that fits in one chunk skips it. The loss is the same sum as one `cross_entropy` over all scored rows (up to float
summation order).

Replay rows (pipeline/train/replay.py, docs/replay.md) are scored by `train.replay.loss`: "ce", the
cross-entropy of the replay text's next token like any other row, or "kl", the divergence
KL(base ‖ adapter) of the next-token distributions, where the base's are the same model's with the adapter
disabled (one more forward, without gradient). "kl" is zero at the base and only pulls back where the
adapter has moved the model on general text; "ce" keeps pretraining the base on the replay text. Replay
positions are multiplied by `train.replay.weight`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch.utils.checkpoint import checkpoint

from pipeline.train.scoring import chunk_rows, plain_head

ReplayLoss = Literal["ce", "kl"]


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")  # logits (rows, V) upcast for the softmax


def _mixed_loss(
    logits: torch.Tensor,  # (n, V) the adapter's
    targets: torch.Tensor,  # (n,)
    replay: torch.Tensor,  # (n,) bool
    base_logits: torch.Tensor | None,  # (m, V) the base's at the replay positions (m = replay.sum()); None for "ce"
    weight: float,
) -> torch.Tensor:
    """Summed loss of a chunk: cross-entropy at task positions, the replay loss times `weight` at replay ones."""
    logp = F.log_softmax(logits.float(), dim=-1)
    per = -logp.gather(1, targets[:, None]).squeeze(1)  # (n,) cross-entropy
    if base_logits is not None and base_logits.size(0):
        base_logp = F.log_softmax(base_logits.float(), dim=-1)
        kl = (base_logp.exp() * (base_logp - logp[replay])).sum(-1)  # (m,) KL(base || adapter)
        per = per.masked_scatter(replay, kl)
    return (per * torch.where(replay, weight, 1.0)).sum()


class ScoredTokenLoss(torch.nn.Module):
    """The PEFT causal LM with the loss attached, so that DDP wraps (and syncs) one forward that returns the loss.

    `forward` returns the summed loss of `targets` (N,) at the `scored` (B, T) positions, row-major: the
    cross-entropy, except at `replay` (N,) positions, which get `replay_loss` times `replay_weight`."""

    def __init__(
        self,
        model: PeftModel,
        *,
        chunk_elements: int,
        replay_loss: ReplayLoss = "ce",
        replay_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.chunked = plain_head(model.get_base_model())
        self.rows = chunk_rows(model.get_base_model().config.get_text_config().vocab_size, chunk_elements)
        self.replay_loss = replay_loss
        self.replay_weight = replay_weight
        # The LoRA layers, found once: toggled directly for the base's forward (see `base_only`); none when this
        # PEFT's layers lack the flag, and then the public way is used.
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        self._lora_layers = layers if all(hasattr(m, "_disable_adapters") for m in layers) else []
        self._head_adapted = _adapted(model.get_base_model().get_output_embeddings())

    def base_only(self) -> AbstractContextManager[None]:
        """The base model's outputs, for a forward without gradient. `PeftModel.disable_adapter()` walks every
        module and flips requires_grad on each side: 7 ms a call on the demo base, 15% of its training step. With
        no gradient needed, switching the known LoRA layers' flag is enough (tests compare both)."""
        if not self._lora_layers:
            return self.model.disable_adapter()  # a PEFT without that flag: the public way
        return _adapters_off(self._lora_layers)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor | None,  # (B, T)
        position_ids: torch.Tensor | None,  # (B, T)
        scored: torch.Tensor,  # (B, T) bool: the next token is a response token
        targets: torch.Tensor,  # (N,)
        replay: torch.Tensor | None = None,  # (N,) bool: the scored token is a replay row's; None: none is
    ) -> torch.Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        plain = replay is None or not bool(replay.any()) or (self.replay_loss == "ce" and self.replay_weight == 1.0)
        distill = not plain and self.replay_loss == "kl"
        if not self.chunked:
            # use_cache=False: with a cache, transformers ignores packed position ids
            logits = self.model(**inputs, logits_to_keep=scored, use_cache=False).logits  # (N, V)
            if plain:
                return F.cross_entropy(logits.float(), targets, reduction="sum")
            assert replay is not None
            base = None
            if distill:
                rows, inputs_r, at = _replay_rows(inputs, scored, replay)
                with torch.no_grad(), self.base_only():
                    base = self.model(**inputs_r, logits_to_keep=at[rows], use_cache=False).logits  # (M, V)
            return _mixed_loss(logits, targets, replay, base, self.replay_weight)
        causal_lm = self.model.get_base_model()  # LoRA layers are injected in place, so this still trains them
        hidden = causal_lm.base_model(**inputs, use_cache=False).last_hidden_state  # (B, T, C)
        hidden = hidden[scored]  # (N, C), row-major like `targets`
        head = causal_lm.get_output_embeddings()
        base_hidden = None
        if distill:
            assert replay is not None
            # The base's hidden states at the replay positions only (M, C), row-major like `replay`'s True
            # entries; rows without a replay token skip the base's forward.
            rows, inputs_r, at = _replay_rows(inputs, scored, replay)
            with torch.no_grad(), self.base_only():
                base_hidden = causal_lm.base_model(**inputs_r, use_cache=False).last_hidden_state[at[rows]]
            before = torch.cumsum(replay, 0) - replay.long()  # (N,) replay positions before each position
        total = hidden.new_zeros((), dtype=torch.float32)
        one_chunk = hidden.size(0) <= self.rows
        for start in range(0, hidden.size(0), self.rows):
            end = start + self.rows
            if plain:
                args = (head, hidden[start:end], targets[start:end])
                part = _chunk_loss(*args) if one_chunk else checkpoint(_chunk_loss, *args, use_reentrant=False)
            else:
                assert replay is not None
                bh = None
                if base_hidden is not None:
                    first = int(before[start])
                    bh = base_hidden[first : first + int(replay[start:end].sum())]
                part = self._mixed_chunk(head, hidden[start:end], targets[start:end], replay[start:end], bh, one_chunk)
            total = total + part
        return total

    def _mixed_chunk(
        self,
        head: torch.nn.Module,
        hidden: torch.Tensor,  # (n, C)
        targets: torch.Tensor,  # (n,)
        replay: torch.Tensor,  # (n,) bool
        base_hidden: torch.Tensor | None,  # (m, C) the base's at the chunk's m replay positions, for "kl"
        one_chunk: bool,
    ) -> torch.Tensor:
        def fn(h: torch.Tensor) -> torch.Tensor:
            base = None
            if base_hidden is not None:
                # Inside the checkpoint too: recomputed in the backward instead of held for every chunk.
                with torch.no_grad(), self.base_only() if self._head_adapted else nullcontext():
                    base = head(base_hidden)
            return _mixed_loss(head(h), targets, replay, base, self.replay_weight)

        return fn(hidden) if one_chunk else checkpoint(fn, hidden, use_reentrant=False)


@contextmanager
def _adapters_off(layers: list[BaseTunerLayer]) -> Iterator[None]:
    before = [m._disable_adapters for m in layers]
    for m in layers:
        m._disable_adapters = True
    try:
        yield
    finally:
        for m, state in zip(layers, before, strict=True):
            m._disable_adapters = state


def _replay_rows(
    inputs: dict[str, torch.Tensor | None], scored: torch.Tensor, replay: torch.Tensor
) -> tuple[torch.Tensor, dict[str, torch.Tensor | None], torch.Tensor]:
    """(rows holding a scored replay position (B,), the inputs of those rows, (B, T) scored replay positions)."""
    at = torch.zeros_like(scored)
    at[scored] = replay
    rows = at.any(dim=1)
    return rows, {k: v[rows] if v is not None else None for k, v in inputs.items()}, at


def _adapted(head: torch.nn.Module) -> bool:
    """Whether the LM head itself carries LoRA weights (only when `lora.target_modules` names it)."""
    return any("lora_" in name for name, _ in head.named_parameters())
