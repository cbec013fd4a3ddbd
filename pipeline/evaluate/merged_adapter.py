"""Score the adapter side with the LoRA update merged into the base weights, then restore the base bit for bit.

Unmerged, every wrapped layer runs its base projection plus the LoRA branch (dropout, A, B); merged, the
adapter side costs what the base side costs. PEFT's `unmerge_adapter()` subtracts the update again, which
is exact in real numbers but not in floating point, so the targeted base weights are copied before the
merge and copied back after the unmerge: the model that leaves `merged_adapter()` is the one that entered.

Merging is refused (the caller scores unmerged) where the merged model would not compute the same
function as the unmerged one, or where PEFT cannot merge in place:
- a layer that is not a plain LoRA `Linear` over an `nn.Linear` (quantized bases, Conv1D, other tuners);
- LoRA variants (DoRA and others rescale the weight instead of adding B @ A), or a LoRA bias over a
  base layer without one;
- weights in half precision: W + B @ A is rounded to the weight's dtype, which can swallow the small
  update of a lightly trained adapter, so the check would under-measure it;
- layer replication (replicated layers share base weights), or a model in training mode (dropout).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft import PeftModel
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.tuners_utils import BaseTunerLayer

# Weight dtypes in which W + B @ A keeps the update (see the module docstring on half precision).
_MERGE_DTYPES = {torch.float32, torch.float64}


def merge_refusal(model: PeftModel) -> str | None:
    """Why merging `model`'s adapter would not score the same function exactly; None where it is safe."""
    if model.training:
        return "the model is in training mode (LoRA dropout applies only unmerged)"
    if model.peft_config[model.active_adapter].is_prompt_learning:
        return "the adapter is prompt learning, which has no weights to merge"
    if getattr(model.peft_config[model.active_adapter], "layer_replication", None):
        return "layer replication shares base weights between layers"
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        return "the model has no adapter layers"
    for name, layer in layers:
        if type(layer) is not LoraLinear:
            return f"layer {name} is a {type(layer).__name__}, not a plain LoRA Linear"
        if layer.merged:
            return f"layer {name} is already merged"
        base = layer.get_base_layer()
        if type(base) is not torch.nn.Linear:
            return f"layer {name} wraps a {type(base).__name__} (quantized or not a torch Linear)"
        if base.weight.dtype not in _MERGE_DTYPES:
            return f"layer {name} has {base.weight.dtype} weights (the merged sum would be rounded)"
        if any(a in layer.lora_variant for a in layer.active_adapters):
            return f"layer {name} uses a LoRA variant (e.g. DoRA) that does not merge as W + B @ A"
        if base.bias is None and any(layer.lora_bias.get(a) for a in layer.active_adapters):
            return f"layer {name} has a LoRA bias but its base layer has no bias to merge it into"
    return None


@contextmanager
def merged_adapter(model: PeftModel) -> Iterator[bool]:
    """Inside: the active adapter merged into the base weights (True), or left unmerged where refused (False).

    On exit the targeted base weights and biases are exactly what they were on entry, also after an error.
    """
    if merge_refusal(model) is not None:
        yield False
        return
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    for layer in model.modules():
        if isinstance(layer, LoraLinear):
            base = layer.get_base_layer()
            saved.append((base.weight, base.weight.detach().clone()))
            if base.bias is not None:
                saved.append((base.bias, base.bias.detach().clone()))
    try:
        model.merge_adapter()
        yield True
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for param, original in saved:
                param.copy_(original)
