"""Batched multi-LoRA forward (punica / S-LoRA style) over a `PeftModel` holding many adapters.

PEFT's mixed batch (`adapter_names=[...]`) loops over the adapters of a batch in every LoRA layer, so its cost
grows with the number of adapters. Here each LoRA-wrapped linear keeps its adapters' weights stacked,
A as (S, R, in) and B as (S, out, R) with S = adapters + 1 (slot 0: zeros, the base-only rows) and R the
layer's largest rank (smaller ranks zero-padded), and one forward computes for every row at once

    base(x) + scale[slot] * (x @ A[slot]ᵀ) @ B[slot]ᵀ          with slot = the row's adapter,

two batched matmuls whatever the number of adapters. PEFT's own `lora_A` / `lora_B` weights become views into
the stacks, so an adapter is held once, and PEFT's paths (the active adapter, `adapter_names`) keep working.

What the stack cannot run falls back to PEFT, explicitly (a log line says why), never silently wrong:
adapters with a LoRA variant (DoRA), a LoRA bias, `modules_to_save` or trainable tokens stay out of the stack,
and a model with any adapter layer other than a plain `lora.Linear` (embeddings, convolutions, quantized
layers) runs every mixed batch through PEFT. Inference only: LoRA dropout is not applied, so the model must
be in eval mode.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

log = logging.getLogger(__name__)

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


@dataclass
class _Stack:
    """One layer's stacked adapters: A (S, R, in), B (S, out, R), scale (S,); None where no adapter targets it."""

    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    scale: torch.Tensor | None = None


class _BatchedForward:
    """Installed as a `lora.Linear`'s `forward`: PEFT's own forward unless a batched forward is running."""

    def __init__(self, multi: MultiLora, layer: LoraLinear) -> None:
        self.multi = multi
        self.layer = layer
        self.stack = _Stack()
        self.peft_forward = LoraLinear.forward.__get__(layer)

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        slots = self.multi.slots
        if slots is None:
            return self.peft_forward(x, *args, **kwargs)
        result = self.layer.base_layer(x, *args, **kwargs)
        s = self.stack
        if s.a is None or s.b is None or s.scale is None:
            return result
        rows = x.reshape(len(slots), -1, x.shape[-1]).to(s.a.dtype)  # (B, T, in)
        a = s.a.index_select(0, slots)  # (B, R, in)
        b = s.b.index_select(0, slots)  # (B, out, R)
        delta = torch.bmm(torch.bmm(rows, a.transpose(1, 2)), b.transpose(1, 2))  # (B, T, out)
        delta = delta * s.scale.index_select(0, slots)[:, None, None]
        return result + delta.reshape(result.shape).to(result.dtype)


class MultiLora:
    """The stacks of a PeftModel's adapters; `rebuild()` after every adapter added or deleted."""

    def __init__(self, model: PeftModel) -> None:
        self.model = model
        self.slot: dict[str, int] = {}  # stacked adapter -> its slot (1..n); 0 is the base
        self.unsupported: dict[str, str] = {}  # adapter -> why it runs through PEFT's path
        self.blocker: str | None = None  # why no mixed batch can use the stack (a layer type it cannot run)
        self.slots: torch.Tensor | None = None  # (B,) during a batched forward
        self._forwards: dict[str, _BatchedForward] = {}
        self.rebuild()

    def supports(self, adapters: Iterable[str]) -> bool:
        """Whether rows of these adapters (and BASE) can run as one batched forward."""
        return self.blocker is None and all(a == BASE or a in self.slot for a in adapters)

    def why_not(self, adapters: Iterable[str]) -> str:
        """Why `supports(adapters)` is False, for the log."""
        if self.blocker is not None:
            return self.blocker
        return "; ".join(
            f"{a}: {self.unsupported.get(a, 'not loaded')}" for a in adapters if a != BASE and a not in self.slot
        )

    @contextmanager
    def rows(self, adapters: list[str], device: torch.device) -> Iterator[None]:
        """Within it, a forward of the model runs row i with adapter `adapters[i]` (BASE: none)."""
        assert self.supports(adapters), self.why_not(adapters)
        assert not self.model.training, "LoRA dropout is not applied: serve in eval mode"
        self.slots = torch.tensor([self.slot.get(a, 0) for a in adapters], dtype=torch.long, device=device)
        try:
            yield
        finally:
            self.slots = None

    def rebuild(self) -> None:
        """Re-stack every layer from the adapters the model holds now (PEFT's weights become views of it)."""
        config = self.model.peft_config
        logged, blocker = set(self.unsupported), self.blocker
        self.unsupported = {name: why for name in config if (why := _config_limit(config[name]))}
        layers = {
            n: m for n, m in self.model.named_modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))
        }
        others = sorted({type(m).__name__ for m in layers.values() if type(m) is not LoraLinear})
        self.blocker = f"adapter layers the stack cannot run: {', '.join(others)}" if others else None
        linears = {n: m for n, m in layers.items() if type(m) is LoraLinear}
        for layer in linears.values():
            for name in layer.lora_A:
                if name in layer.lora_variant:
                    self.unsupported.setdefault(name, f"a LoRA variant ({type(layer.lora_variant[name]).__name__})")
                elif layer.lora_B[name].bias is not None:
                    self.unsupported.setdefault(name, "a LoRA bias (lora_bias)")
        dtypes = {name: layer.lora_A[name].weight.dtype for layer in linears.values() for name in layer.lora_A}
        stacked = [name for name in config if name not in self.unsupported]
        for name in stacked[1:]:  # one dtype per stack (PEFT loads adapters alike; this only guards the views)
            if dtypes.get(name) != dtypes.get(stacked[0]):
                self.unsupported[name] = f"LoRA weights in {dtypes.get(name)}, the others' in {dtypes.get(stacked[0])}"
        stacked = [name for name in stacked if name not in self.unsupported]
        self.slot = {name: i + 1 for i, name in enumerate(stacked)}
        self._forwards = {n: f for n, f in self._forwards.items() if n in linears}
        for key, layer in linears.items():
            if key not in self._forwards:
                self._forwards[key] = _BatchedForward(self, layer)
                layer.forward = self._forwards[key]  # an instance attribute: PEFT's class stays untouched
            self._forwards[key].stack = _stack(layer, self.slot)
        for name, why in self.unsupported.items():
            if name not in logged:
                log.info("adapter %s: its mixed batches run through PEFT's per-adapter path (%s)", name, why)
        if self.blocker and self.blocker != blocker:
            log.info("every mixed batch runs through PEFT's per-adapter path (%s)", self.blocker)


def _config_limit(config: Any) -> str | None:
    """Why an adapter's config keeps it out of the stack (None: it can be stacked)."""
    if getattr(config, "peft_type", None) is None or str(config.peft_type.value) != "LORA":
        return f"a {getattr(config, 'peft_type', None)} adapter, not LoRA"
    if getattr(config, "use_dora", False):
        return "DoRA (use_dora)"
    if getattr(config, "lora_bias", False):
        return "a LoRA bias (lora_bias)"
    if getattr(config, "modules_to_save", None):
        return "modules_to_save"
    if getattr(config, "trainable_token_indices", None):
        return "trainable tokens"
    return None


@torch.no_grad()
def _stack(layer: LoraLinear, slot: dict[str, int]) -> _Stack:
    """Stack the layer's adapters by slot (zero-padded to the largest rank) and point PEFT's weights into it."""
    present = [name for name in slot if name in layer.lora_A]
    if not present:
        return _Stack()
    first = layer.lora_A[present[0]].weight
    rank = max(layer.r[name] for name in present)
    n_in, n_out = layer.in_features, layer.out_features
    a = first.new_zeros((len(slot) + 1, rank, n_in))  # (S, R, in)
    b = first.new_zeros((len(slot) + 1, n_out, rank))  # (S, out, R)
    scale = first.new_zeros(len(slot) + 1)  # (S,)
    for name in present:
        s, r = slot[name], layer.r[name]
        wa, wb = layer.lora_A[name].weight, layer.lora_B[name].weight  # (r, in), (out, r)
        assert wa.dtype == wb.dtype == first.dtype, "MultiLora.rebuild keeps one dtype per stack"
        a[s, :r] = wa
        b[s, :, :r] = wb
        scale[s] = layer.scaling[name]
        wa.data = a[s, :r]  # one copy of each adapter: PEFT's weights are views of the stack
        wb.data = b[s, :, :r]
    return _Stack(a, b, scale)
