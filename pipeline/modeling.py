"""Load base models and tokenizers through `from_pretrained` and fingerprint them for manifests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

# Local weight files up to this size are hashed in full; bigger ones by size + safetensors header,
# so that a 70B checkpoint does not cost minutes of hashing per run.
_FULL_HASH_LIMIT = 2 * 1024**3


def resolve_device(device: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """The torch device for a config value; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is visible; use device: auto or cpu")
    return torch.device(device)


def load_tokenizer(base_model: str) -> PreTrainedTokenizerBase:
    """The base model's tokenizer, with a pad token (EOS) when it has none."""
    tok = AutoTokenizer.from_pretrained(base_model)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base_model(base_model: str, device: torch.device) -> PreTrainedModel:
    """The base causal LM: bf16 on CUDA, fp32 on CPU (where bf16 matmuls are slow and inexact)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype)
    return model.to(device)


def _hash_file(h: hashlib._Hash, path: Path) -> None:
    size = path.stat().st_size
    h.update(f"{path.name}:{size}".encode())
    with path.open("rb") as f:
        if size <= _FULL_HASH_LIMIT:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        else:
            h.update(f.read(1 << 20))  # safetensors header and first tensors


@dataclass(frozen=True)
class BaseFingerprint:
    """Identifies the exact base model an adapter was trained on."""

    model_id: str
    revision: str | None
    weights_hash: str
    tokenizer_hash: str
    chat_template_hash: str | None


def fingerprint_base(base_model: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> BaseFingerprint:
    """Hashes of the base weights (local dirs) or the hub revision, tokenizer vocab and chat template."""
    local = Path(base_model)
    revision = getattr(model.config, "_commit_hash", None)
    h = hashlib.sha256()
    if local.is_dir():
        for p in sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin")) + [local / "config.json"]:
            if p.is_file():
                _hash_file(h, p)
    else:
        h.update(f"{base_model}@{revision}".encode())
    vocab = sorted(tokenizer.get_vocab().items())
    tok_hash = hashlib.sha256(repr(vocab).encode()).hexdigest()
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return BaseFingerprint(
        model_id=base_model,
        revision=revision,
        weights_hash=h.hexdigest(),
        tokenizer_hash=tok_hash,
        chat_template_hash=hashlib.sha256(template.encode()).hexdigest() if template else None,
    )
