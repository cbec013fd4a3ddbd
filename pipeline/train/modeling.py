"""Load base models and adapters through `from_pretrained`, safe formats only, and fingerprint them for manifests.

Every model or adapter load in the project goes through `load_base_model` / `apply_adapter` / `add_adapter`
here: weights load from safetensors (a pickle can run code when read), a pickle-only base model loads only
with `model.allow_pickle_weights: true`, an adapter only from `adapter_model.safetensors`, and
`trust_remote_code` is whatever `model.trust_remote_code` says (default off).
"""

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

from pipeline.base_model import PICKLE_WEIGHT_GLOBS, UnsafeFormatError, check_weights_format, local_weights_hash
from pipeline.config import SAFE_LOADING, LoraConfig, ModelConfig

ADAPTER_WEIGHTS = "adapter_model.safetensors"


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


def safe_load_kwargs(base_model: str, loading: ModelConfig) -> dict[str, Any]:
    """The `from_pretrained` arguments every base-model load uses; refuses a local directory that holds only
    pickle weights unless `model.allow_pickle_weights` is on (a hub repo without safetensors fails in
    transformers itself, because `use_safetensors=True` forbids the pickle fallback)."""
    check_weights_format(base_model, allow_pickle_weights=loading.allow_pickle_weights)
    # allow_pickle_weights: None lets transformers fall back to *.bin (it still reads them with weights_only=True).
    return {
        "use_safetensors": None if loading.allow_pickle_weights else True,
        "trust_remote_code": loading.trust_remote_code,
    }


def load_base_model(
    base_model: str,
    device: torch.device,
    *,
    loading: ModelConfig = SAFE_LOADING,
    quantize: Literal["none", "nf4"] = "none",
    attn_implementation: str | None = None,
) -> PreTrainedModel:
    """The base causal LM: bf16 on CUDA, fp32 on CPU (where bf16 matmuls are slow and inexact);
    with quantize="nf4" the frozen weights are 4-bit NF4 (QLoRA), which bitsandbytes runs on CUDA only.
    Safetensors only unless `loading.allow_pickle_weights`; remote code only with `loading.trust_remote_code`."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype, **safe_load_kwargs(base_model, loading)}
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


def _adapter_weights(adapter_dir: str | Path) -> Path:
    """The adapter directory, after checking it holds `adapter_model.safetensors` (PEFT would otherwise fall back
    to unpickling `adapter_model.bin`)."""
    path = Path(adapter_dir)
    if not (path / ADAPTER_WEIGHTS).is_file():
        found = sorted(p.name for g in PICKLE_WEIGHT_GLOBS for p in path.glob(g)) if path.is_dir() else []
        held = f"it holds only {', '.join(found)}, a pickle, which is never loaded" if found else "no such file"
        raise UnsafeFormatError(
            f"adapter {path} has no {ADAPTER_WEIGHTS} ({held}); adapters load from safetensors only"
        )
    return path


def apply_adapter(base: PreTrainedModel, adapter_dir: str | Path) -> PeftModel:
    """`base` with the saved adapter applied for inference, read from `adapter_model.safetensors` only (PEFT
    prefers that file when it exists, and `_adapter_weights` makes sure it does)."""
    path = _adapter_weights(adapter_dir)
    return PeftModel.from_pretrained(base, str(path), is_trainable=False)


def add_adapter(model: PeftModel, adapter_dir: str | Path, adapter_name: str) -> None:
    """Load a second saved adapter next to the ones `model` has (inference), from safetensors only."""
    path = _adapter_weights(adapter_dir)
    model.load_adapter(str(path), adapter_name=adapter_name, is_trainable=False)


def load_adapter(
    base_model: str, adapter_dir: str | Path, device: torch.device, *, loading: ModelConfig = SAFE_LOADING
) -> PeftModel:
    """The base model with the saved adapter applied (inference mode)."""
    path = _adapter_weights(adapter_dir)  # refuse before spending the base model's load time
    return apply_adapter(load_base_model(base_model, device, loading=loading), path)
