"""Merge a trained adapter into its base model and save a standalone model directory.

The merge always happens in a full-precision copy of the base (fp32 on CPU, bf16 on CUDA), even
for a QLoRA adapter: folding a LoRA update into 4-bit NF4 weights would re-quantize them and lose
the update, so `merge_into` refuses a quantized base instead of doing it silently.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from transformers import PreTrainedModel

from pipeline.base_model import resolve_base
from pipeline.chat_format import load_tokenizer
from pipeline.config import SAFE_LOADING, ModelConfig
from pipeline.train.manifest import MANIFEST, check_manifest_matches
from pipeline.train.modeling import apply_adapter, is_quantized, load_base_model


def adapter_base_model(adapter_dir: Path) -> str:
    """The base model recorded in the adapter's manifest (or PEFT's adapter_config.json), resolved to what
    `from_pretrained` opens (a registry download records `model-store:DIR`; see pipeline/base_model.py)."""
    manifest = adapter_dir / MANIFEST
    if manifest.is_file():
        return resolve_base(str(json.loads(manifest.read_text())["base_model"]["model_id"]))
    peft_cfg = adapter_dir / "adapter_config.json"
    if not peft_cfg.is_file():
        raise FileNotFoundError(f"{adapter_dir} is not a PEFT adapter directory (no adapter_config.json)")
    return resolve_base(str(json.loads(peft_cfg.read_text())["base_model_name_or_path"]))


def merge_into(model: PeftModel) -> PreTrainedModel:
    """Fold the adapter into the base weights; a 4-bit/8-bit base is refused (merge into a full-precision copy)."""
    if is_quantized(model.get_base_model()):
        raise ValueError(
            "refusing to merge a LoRA adapter into a 4-bit/8-bit quantized base: the merged weights would be "
            "re-quantized and lose the update; load the base in full precision (lora.quantize: none) and merge "
            "there, as `lora-pipeline export ADAPTER --merged OUT` does"
        )
    return model.merge_and_unload()


def export_merged(
    adapter_dir: str | Path,
    out_dir: str | Path,
    *,
    base_model: str | None = None,
    device: str = "cpu",
    loading: ModelConfig = SAFE_LOADING,
) -> Path:
    """Load the base in full precision, apply the adapter, merge, and save model + tokenizer to `out_dir`."""
    adapter = Path(adapter_dir)
    base_id = base_model or adapter_base_model(adapter)
    dev = torch.device(device)
    base = load_base_model(base_id, dev, loading=loading)  # never quantized: see the module docstring
    model = apply_adapter(base, adapter)
    # The adapter directory holds the tokenizer it was trained with (chat template included).
    tok_source = adapter if (adapter / "tokenizer_config.json").is_file() else Path(base_id)
    tokenizer = load_tokenizer(str(tok_source), trust_remote_code=loading.trust_remote_code)
    manifest = adapter / MANIFEST
    if manifest.is_file():
        # The same guard as evaluation: never merge an adapter into a base it was not trained on.
        base_tok = load_tokenizer(base_id, trust_remote_code=loading.trust_remote_code)
        check_manifest_matches(json.loads(manifest.read_text()), base_id, model, base_tok)
    merged = merge_into(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
