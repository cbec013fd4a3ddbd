"""The adapter's compatibility manifest (`manifest.json`): which base weights, tokenizer, chat template,
data and config it was trained with, written by the recipe and checked by every loader of a saved adapter."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.train.modeling import fingerprint_base

MANIFEST = "manifest.json"


def check_manifest_matches(
    manifest: dict[str, Any], base_model: str, model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase
) -> None:
    """Raise ValueError if the adapter was trained on another base model, tokenizer or chat template."""
    trained = manifest.get("base_model") or {}
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    current = asdict(fingerprint_base(base_model, base, tokenizer))
    for key in ("weights_hash", "tokenizer_hash", "chat_template_hash"):
        if trained.get(key) != current[key]:
            raise ValueError(
                f"adapter manifest {key} does not match base model {base_model!r} "
                f"(trained on {trained.get('model_id')!r}); load it onto the base it was trained on"
            )
