"""Load base models and tokenizers through `from_pretrained` and fingerprint them for manifests."""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from pipeline.base_model import local_weights_hash
from pipeline.config import LoraConfig


def resolve_device(device: Literal["auto", "cpu", "cuda"]) -> torch.device:
    """The torch device for a config value; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device='cuda' but no CUDA device is visible; use device: auto or cpu")
    return torch.device(device)


def flash_attention_available(device: torch.device) -> bool:
    """Whether the flash-attn varlen kernels can run here (CUDA + the `flash_attn` package)."""
    return device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None


def load_base_model(
    base_model: str,
    device: torch.device,
    *,
    quantize: Literal["none", "nf4"] = "none",
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The base causal LM: bf16 on CUDA, fp32 on CPU (where bf16 matmuls are slow and inexact);
    with quantize="nf4" the frozen weights are 4-bit NF4 (QLoRA), which bitsandbytes runs on CUDA only."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantize == "nf4":
        if device.type != "cuda":
            raise ValueError(
                "lora.quantize='nf4' (QLoRA) needs a CUDA device: bitsandbytes 4-bit kernels do not run on "
                f"{device.type}; set lora.quantize: none to train in fp32 on CPU"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ValueError("lora.quantize='nf4' needs the bitsandbytes package: pip install bitsandbytes")
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = {"": device.index or 0}
        return AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(base_model, **kwargs)
    return model.to(device)


def is_quantized(model: torch.nn.Module) -> bool:
    """True when the (base) model holds bitsandbytes 4-/8-bit weights."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def attach_lora(model: PreTrainedModel, lora: LoraConfig, *, gradient_checkpointing: bool) -> PeftModel:
    """Wrap the base in a trainable PEFT LoRA model (DoRA / rsLoRA / QLoRA as configured)."""
    if lora.quantize == "nf4":
        # Casts norms to fp32, enables input grads, and turns on checkpointing as QLoRA expects.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # The frozen embeddings give inputs without grad; checkpointed blocks still need a grad path.
        model.enable_input_require_grads()
    model.config.use_cache = False  # a KV cache is useless in training and wastes memory
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.peft_target_modules(),
        use_dora=lora.use_dora,
        use_rslora=lora.use_rslora,
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, peft_config)
    except ValueError as e:
        raise ValueError(f"lora.target_modules={lora.target_modules!r} does not fit this base model: {e}") from e


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
    if local.is_dir():
        weights_hash = local_weights_hash(local)
    else:
        weights_hash = hashlib.sha256(f"{base_model}@{revision}".encode()).hexdigest()
    vocab = sorted(tokenizer.get_vocab().items())
    tok_hash = hashlib.sha256(repr(vocab).encode()).hexdigest()
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    return BaseFingerprint(
        model_id=base_model,
        revision=revision,
        weights_hash=weights_hash,
        tokenizer_hash=tok_hash,
        chat_template_hash=hashlib.sha256(template.encode()).hexdigest() if template else None,
    )


def load_adapter(base_model: str, adapter_dir: str | Path, device: torch.device) -> PeftModel:
    """The base model with the saved adapter applied (inference mode)."""
    base = load_base_model(base_model, device)
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
