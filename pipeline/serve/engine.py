"""The PyTorch serving engine: one base model, N LoRA adapters in one `PeftModel`, mixed-adapter batches.

A worker thread collects requests for a few milliseconds, left-pads their prompts into one batch and decodes
greedily with a KV cache; PEFT's per-row `adapter_names=[...]` (with `BASE` for the base) lets rows of different
adapters share every forward. Each row's tokens are handed to its request as they come, and finished rows leave
the batch (their KV-cache rows are dropped). Adapters are added and deleted between forwards, under the same lock.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.base_model import UnsafeFormatError
from pipeline.train.modeling import ADAPTER_WEIGHTS

log = logging.getLogger(__name__)

# PEFT's name for "no adapter" in a mixed batch.
BASE = "__base__"


@dataclass
class Generation:
    """One request to decode: prompt ids, the adapter (PEFT name or BASE), and where its text goes.

    `on_text` gets each new piece of decoded text and `on_done(text, finish_reason, n_tokens)` the whole answer
    (stripped, as `pipeline.serve.chat.answer` returns it); `on_error` gets an exception instead. All three are
    called from the engine's thread, and exactly one of `on_done` / `on_error` is called.
    """

    ids: list[int]
    adapter: str
    max_new_tokens: int
    on_text: Callable[[str], Any]
    on_done: Callable[[str, str, int], Any]
    on_error: Callable[[BaseException], Any]
    stop_at_eos: bool = True  # False: always max_new_tokens (fixed-length decoding for benchmarks)
    new_ids: list[int] = field(default_factory=list)
    sent: str = ""

    def push(self, token: int, tokenizer: PreTrainedTokenizerBase) -> None:
        """Add a generated token and send the text it completes (held back while it ends in a partial character)."""
        self.new_ids.append(token)
        text = tokenizer.decode(self.new_ids, skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return
        if len(text) > len(self.sent):
            self.on_text(text[len(self.sent) :])
            self.sent = text

    def finish(self, tokenizer: PreTrainedTokenizerBase, reason: str) -> None:
        text = tokenizer.decode(self.new_ids, skip_special_tokens=True).strip()
        self.on_done(text, reason, len(self.new_ids))


class BatchEngine:
    """Owns the model: greedy mixed-adapter batches on a worker thread, adapters added/deleted between forwards."""

    def __init__(
        self,
        base: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch: int = 32,
        batch_wait_s: float = 0.005,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: a batch holds at least one request")
        self.base = base.eval()
        self.tokenizer = tokenizer
        self.model: torch.nn.Module = self.base  # becomes a PeftModel with the first adapter
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self.device = next(base.parameters()).device
        self.lock = threading.Lock()  # held for each forward and each adapter add/delete
        self.dora: set[str] = set()  # DoRA adapters: PEFT cannot mix them, so each decodes in its own batch
        self.max_positions = int(getattr(base.config, "max_position_embeddings", 0) or 0)
        # transformers renamed `past_key_values` to `cache` (5.25); pass the cache under the name this one takes.
        self._cache_kw = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
        self._queue: queue.Queue[Generation | None] = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="batch-engine", daemon=True)
        self._worker.start()

    # adapters -----------------------------------------------------------------------------------------------

    def add_adapter(self, name: str, adapter_dir: Path) -> None:
        """Load the PEFT adapter in `adapter_dir` under `name` (inference mode), next to the others."""
        if not (Path(adapter_dir) / ADAPTER_WEIGHTS).is_file():
            raise UnsafeFormatError(f"adapter {adapter_dir} has no {ADAPTER_WEIGHTS}; adapters load from safetensors")
        with self.lock, torch.no_grad():
            if isinstance(self.model, PeftModel):
                try:
                    self.model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=False)
                except BaseException:
                    if name in self.model.peft_config:  # a half-injected adapter must not stay behind
                        self.model.delete_adapter(name)
                    raise
            else:
                self.model = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=name)
                assert isinstance(self.model, PeftModel)
            self.model.eval()
            if getattr(self.model.peft_config[name], "use_dora", False):
                self.dora.add(name)

    def delete_adapter(self, name: str) -> None:
        """Free an adapter's weights; the caller makes sure no queued or running request uses it."""
        with self.lock:
            assert isinstance(self.model, PeftModel) and len(self.model.peft_config) > 1, "keep one adapter loaded"
            self.model.delete_adapter(name)
            self.dora.discard(name)

    def adapters(self) -> list[str]:
        return list(self.model.peft_config) if isinstance(self.model, PeftModel) else []

    # requests -----------------------------------------------------------------------------------------------

    def submit(self, gen: Generation) -> None:
        """Queue a request; its callbacks run on the engine thread."""
        if not gen.ids:
            raise ValueError("the prompt renders to no tokens")
        if self.max_positions and len(gen.ids) + gen.max_new_tokens > self.max_positions:
            raise ValueError(
                f"prompt ({len(gen.ids)} tokens) + max_tokens ({gen.max_new_tokens}) exceeds the model's "
                f"{self.max_positions} positions; shorten the prompt or lower max_tokens"
            )
        self._queue.put(gen)

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            for group in self._groups(batch):
                try:
                    self.generate(group)
                except BaseException as e:  # every request of a failed batch hears why; the engine keeps serving
                    log.exception("batch of %d failed", len(group))
                    for gen in group:
                        gen.on_error(e)

    def _groups(self, batch: list[Generation]) -> list[list[Generation]]:
        """The batch as PEFT can run it: LoRA and base rows together, each DoRA adapter's rows apart."""
        groups: dict[str, list[Generation]] = {}
        for gen in batch:
            groups.setdefault(gen.adapter if gen.adapter in self.dora else "", []).append(gen)
        return list(groups.values())

    @torch.no_grad()
    def generate(self, batch: list[Generation]) -> None:
        """Greedy-decode `batch` together: left-padded prefill, then one token per row per step from the KV cache."""
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        width = max(len(g.ids) for g in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, T)
        for row, g in enumerate(batch):
            input_ids[row, width - len(g.ids) :] = torch.tensor(g.ids, dtype=torch.long)
            mask[row, width - len(g.ids) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        # Positions count real tokens only, so that a left-padded row sees the positions it would see alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
        live = list(batch)
        cache = DynamicCache()
        logits = self._forward(input_ids, mask, positions, cache, [g.adapter for g in live])  # (B, V)
        while True:
            next_ids = logits.argmax(dim=-1)  # (B,)
            keep = []
            for row, g in enumerate(live):
                token = int(next_ids[row])
                if token == tok.eos_token_id and g.stop_at_eos:
                    g.finish(tok, "stop")
                    continue
                g.push(token, tok)
                if len(g.new_ids) >= g.max_new_tokens:
                    g.finish(tok, "length")
                    continue
                keep.append(row)
            if not keep:
                return
            if len(keep) < len(live):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                next_ids, mask, positions = next_ids[index], mask[index], positions[index]
                live = [live[r] for r in keep]
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)  # (B, T + 1)
            positions = positions[:, -1:] + 1  # (B, 1)
            logits = self._forward(next_ids[:, None], mask, positions, cache, [g.adapter for g in live])

    def _forward(
        self,
        input_ids: torch.Tensor,  # (B, t)
        mask: torch.Tensor,  # (B, T): past + t
        positions: torch.Tensor,  # (B, t)
        cache: DynamicCache,
        adapters: list[str],
    ) -> torch.Tensor:
        """Logits of each row's last position, (B, V); rows use their own adapter.

        Rows of several adapters go through PEFT's mixed-batch path (`adapter_names`); a batch of one adapter
        runs it as the active adapter, and a batch of the base alone with the adapters disabled, which skips
        the mixed path's per-adapter gathers (and is the only way a DoRA adapter runs)."""
        inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": mask,
            "position_ids": positions,
            "use_cache": True,
            "logits_to_keep": 1,
            self._cache_kw: cache,
        }
        unique = set(adapters)
        with self.lock:
            if not isinstance(self.model, PeftModel):
                assert unique == {BASE}, "an adapter request before any adapter was loaded"
                out = self.model(**inputs)
            elif unique == {BASE}:
                with self.model.disable_adapter():
                    out = self.model(**inputs)
            elif len(unique) == 1:
                (name,) = unique
                if self.model.active_adapter != name:
                    self.model.set_adapter(name, inference_mode=True)
                out = self.model(**inputs)
            else:
                out = self.model(**inputs, adapter_names=adapters)
        return out.logits[:, -1, :].float()
