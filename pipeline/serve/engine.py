"""The PyTorch serving engine: one base model, N LoRA adapters in one `PeftModel`, mixed-adapter batches.

A worker thread collects requests for a few milliseconds, left-pads their prompts into one batch and decodes
greedily with a KV cache; rows of different adapters (`BASE` for the base) share every forward, computed as one
batched multi-LoRA forward over the adapters' stacked weights (`pipeline.serve.multi_lora`), or by PEFT's per-row
`adapter_names=[...]` for adapters the stack cannot run. Each row's tokens are handed to its request as they come; finished rows leave
the batch and requests that arrive meanwhile join it between steps (continuous batching: their KV cache is
left-padded and stacked onto the running one). Adapters are added and deleted between forwards, under the
same lock.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from pipeline.base_model import UnsafeFormatError
from pipeline.serve.multi_lora import BASE, MultiLora
from pipeline.train.modeling import ADAPTER_WEIGHTS

log = logging.getLogger(__name__)


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
    finished: str | None = None
    cancelled: bool = False  # set by the caller (a client gone): the row leaves the batch at the next step
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
        self.finished = reason
        self.on_done(text, reason, len(self.new_ids))


@dataclass
class _Rows:
    """The running batch: its requests, KV cache, (B, T) attention mask, (B, 1) last positions, and either the
    last forward's (B, V) logits or the (B,) tokens chosen from them, to feed next."""

    live: list[Generation]
    cache: DynamicCache
    mask: torch.Tensor
    positions: torch.Tensor
    logits: torch.Tensor | None = None
    next_ids: torch.Tensor | None = None

    def adapters(self) -> list[str]:
        return [g.adapter for g in self.live]

    def stack(self, other: _Rows) -> _Rows:
        """Both batches as one: masks and every layer's keys/values left-padded to the wider, then stacked."""
        if not other.live:
            return self
        assert self.next_ids is not None and other.next_ids is not None
        width = max(self.mask.shape[1], other.mask.shape[1])
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(other.mask, width, 1)])
        return _Rows(
            self.live + other.live,
            self.cache,
            mask,
            torch.cat([self.positions, other.positions]),
            None,
            torch.cat([self.next_ids, other.next_ids]),
        )


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """`t` with zeros prepended along `dim` up to `width` (masked out wherever they are attended)."""
    missing = width - t.shape[dim]
    if missing == 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class BatchEngine:
    """Owns the model: greedy mixed-adapter batches on a worker thread, adapters added/deleted between forwards."""

    def __init__(
        self,
        base: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_batch: int = 32,
        batch_wait_s: float = 0.005,
        multi_lora: bool = True,
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
        self.multi_lora = multi_lora  # mixed batches as one batched forward (False: PEFT's adapter_names)
        self._stacks: MultiLora | None = None  # the adapters' stacked weights, rebuilt on every add/delete
        self._fallbacks: set[str] = set()  # reasons already logged for mixed batches run by PEFT
        self.max_positions = int(getattr(base.config, "max_position_embeddings", 0) or 0)
        # transformers renamed `past_key_values` to `cache` (5.25); pass the cache under the name this one takes.
        self._cache_kw = "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"
        self._queue: queue.Queue[Generation | None] = queue.Queue()
        self._pending: deque[Generation | None] = deque()  # taken off the queue but not admitted yet
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
                    self._restack()
                    raise
            else:
                self.model = PeftModel.from_pretrained(self.base, str(adapter_dir), adapter_name=name)
                assert isinstance(self.model, PeftModel)
            self.model.eval()
            if getattr(self.model.peft_config[name], "use_dora", False):
                self.dora.add(name)
            self._restack()

    def delete_adapter(self, name: str) -> None:
        """Free an adapter's weights; the caller makes sure no queued or running request uses it."""
        with self.lock:
            assert isinstance(self.model, PeftModel) and len(self.model.peft_config) > 1, "keep one adapter loaded"
            self.model.delete_adapter(name)
            self.dora.discard(name)
            self._restack()

    def _restack(self) -> None:
        """Re-stack the adapters for batched mixed forwards (under the lock, after every add/delete)."""
        if not self.multi_lora or not isinstance(self.model, PeftModel):
            return
        if self._stacks is None:
            self._stacks = MultiLora(self.model)
        else:
            self._stacks.rebuild()

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
            batch = self._next_batch()
            if batch is None:
                return
            for group in self._groups(batch):
                try:
                    self.generate(group, admit=True)
                except BaseException as e:  # every request of a failed batch hears why; the engine keeps serving
                    log.exception("batch of %d failed", len(group))
                    for gen in group:
                        if gen.finished is None:
                            gen.on_error(e)

    def _next_batch(self) -> list[Generation] | None:
        """Requests set aside by `_admit` first, then the queue, waiting up to `batch_wait_s` for more; None: stop."""
        batch: list[Generation] = []
        while self._pending and len(batch) < self.max_batch:
            gen = self._pending.popleft()
            if gen is None:
                return None
            batch.append(gen)
        if not batch:
            first = self._queue.get()
            if first is None:
                return None
            batch.append(first)
        deadline = time.monotonic() + self.batch_wait_s
        while len(batch) < self.max_batch:
            try:
                nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if nxt is None:
                self._pending.append(None)  # stop after this batch
                break
            batch.append(nxt)
        return batch

    def _group_key(self, gen: Generation) -> str:
        return gen.adapter if gen.adapter in self.dora else ""

    def _groups(self, batch: list[Generation]) -> list[list[Generation]]:
        """The batch as PEFT can run it: LoRA and base rows together, each DoRA adapter's rows apart."""
        groups: dict[str, list[Generation]] = {}
        for gen in batch:
            groups.setdefault(self._group_key(gen), []).append(gen)
        return list(groups.values())

    def _admit(self, rows: _Rows) -> list[Generation]:
        """Queued requests that may join the running batch now (same group, room left); others wait their turn."""
        joining: list[Generation] = []
        key = self._group_key(rows.live[0])
        while len(rows.live) + len(joining) < self.max_batch:
            try:
                gen = self._queue.get_nowait()
            except queue.Empty:
                break
            if gen is not None and self._group_key(gen) == key:
                joining.append(gen)
            else:
                self._pending.append(gen)
                break  # keep arrival order for what cannot join
        return joining

    @torch.no_grad()
    def generate(self, batch: list[Generation], *, admit: bool = False) -> None:
        """Greedy-decode `batch` together: left-padded prefill, then one token per row per step from the KV cache.

        With `admit`, queued requests join between steps (continuous batching): they are prefilled on their
        own and their KV cache is left-padded to the running batch's width and stacked onto it, which is
        what one left-padded batch of all of them would hold. Finished rows leave the batch the same way.
        """
        rows = self._choose(self._prefill(batch))
        joinable = admit and all(type(layer) is DynamicLayer for layer in rows.cache.layers)
        while rows.live:
            if joinable and len(rows.live) < self.max_batch:
                joining = self._admit(rows)
                if joining:
                    batch.extend(joining)  # the caller's list: a failure reaches every request that joined
                    rows = rows.stack(self._choose(self._prefill(joining)))
            mask = torch.cat([rows.mask, rows.mask.new_ones((len(rows.live), 1))], dim=1)  # (B, T + 1)
            positions = rows.positions + 1  # (B, 1)
            logits = self._forward(rows.next_ids[:, None], mask, positions, rows.cache, rows.adapters())
            rows = self._choose(_Rows(rows.live, rows.cache, mask, positions, logits))

    def _prefill(self, batch: list[Generation]) -> _Rows:
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
        cache = DynamicCache()
        logits = self._forward(input_ids, mask, positions, cache, [g.adapter for g in batch])  # (B, V)
        return _Rows(list(batch), cache, mask, positions[:, -1:], logits)

    def _choose(self, rows: _Rows) -> _Rows:
        """Each row's next token from its logits: sent to its request; finished rows leave the batch."""
        tok = self.tokenizer
        assert rows.logits is not None
        next_ids = rows.logits.argmax(dim=-1)  # (B,)
        keep = []
        for row, g in enumerate(rows.live):
            if g.cancelled:
                g.finish(tok, "cancelled")
                continue
            token = int(next_ids[row])
            if token == tok.eos_token_id and g.stop_at_eos:
                g.finish(tok, "stop")
                continue
            g.push(token, tok)
            if len(g.new_ids) >= g.max_new_tokens:
                g.finish(tok, "length")
                continue
            keep.append(row)
        if len(keep) < len(rows.live) and keep:
            rows.cache.batch_select_indices(torch.tensor(keep, device=self.device))
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        live = [rows.live[r] for r in keep]
        return _Rows(live, rows.cache, rows.mask[index], rows.positions[index], None, next_ids[index])

    def _forward(
        self,
        input_ids: torch.Tensor,  # (B, t)
        mask: torch.Tensor,  # (B, T): past + t
        positions: torch.Tensor,  # (B, t)
        cache: DynamicCache,
        adapters: list[str],
    ) -> torch.Tensor:
        """Logits of each row's last position, (B, V); rows use their own adapter.

        Rows of several adapters run as one batched forward over the stacked adapters (`MultiLora`), or
        through PEFT's mixed-batch path (`adapter_names`) when an adapter cannot be stacked; a batch of one
        adapter runs it as the active adapter, and a batch of the base alone with the adapters disabled (the
        only ways a DoRA adapter runs)."""
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
            elif self._stacks is not None and self._stacks.supports(unique):
                with self._stacks.rows(adapters, self.device):
                    out = self.model(**inputs)
            else:
                if self._stacks is not None and (why := self._stacks.why_not(unique)) not in self._fallbacks:
                    self._fallbacks.add(why)
                    log.info("mixed batch through PEFT's per-adapter path: %s", why)
                out = self.model(**inputs, adapter_names=adapters)
        return out.logits[:, -1, :].float()
