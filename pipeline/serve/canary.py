"""Serving-aware promotion: does an adapter load through the serving loader and answer a canary prompt?

`canary_check` runs the same path `lora-pipeline serve` runs for a new registry version (the manifest and
adapter-config checks of `check_servable`, `BatchEngine.add_adapter`, one greedy mixed-batch generation), so
that an alias never moves to an adapter the server would refuse. It also says which engines cannot serve the
adapter: vLLM's LoRA kernels do not run DoRA adapters (`use_dora` in adapter_config.json); the torch engine
runs them, in batches of their own, since PEFT's mixed-adapter path does not implement DoRA.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from pipeline.chat_format import load_tokenizer
from pipeline.config import SAFE_LOADING, ModelConfig
from pipeline.serve.adapter_pool import AdapterRefused, check_servable, engine_limits
from pipeline.serve.chat import prompt_text
from pipeline.serve.engine import BatchEngine, Generation
from pipeline.train.manifest import MANIFEST
from pipeline.train.modeling import fingerprint_base, load_base_model, resolve_device

Engine = Literal["torch", "vllm"]
CANARY_PROMPT = "Say hello in one short sentence."


@dataclass(frozen=True)
class CanaryResult:
    """The canary's answer, and the engines that could not serve this adapter (flag -> why)."""

    answer: str
    finish_reason: str
    unservable_by: dict[str, str]


def canary_check(
    adapter_dir: str | Path,
    base_model: str,
    *,
    engine: Engine = "torch",
    prompt: str = CANARY_PROMPT,
    max_new_tokens: int = 16,
    device: Literal["auto", "cpu", "cuda"] = "cpu",
    loading: ModelConfig = SAFE_LOADING,
) -> CanaryResult:
    """Load the adapter on `base_model` as the server would and answer `prompt` greedily.

    Raises `AdapterRefused` (a ValueError) with the reason when the server would refuse the adapter (another
    base, tokenizer or chat template; not a LoRA; a DoRA adapter for an engine that cannot run it), and when
    the canary answer is empty.
    """
    path = Path(adapter_dir)
    limits = engine_limits(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise AdapterRefused(f"adapter {path} has no {MANIFEST}; only adapters written by the recipe are served")
    trained = json.loads(manifest_path.read_text()).get("base_model") or {}
    tokenizer = load_tokenizer(base_model, trust_remote_code=loading.trust_remote_code)
    base = load_base_model(base_model, resolve_device(device), loading=loading)
    check_servable(path, trained, asdict(fingerprint_base(base_model, base, tokenizer)), f"adapter {path}", engine)
    batch = BatchEngine(base, tokenizer, max_batch=1)
    try:
        try:
            batch.add_adapter("canary", path)
        except (ValueError, KeyError, RuntimeError) as e:
            raise AdapterRefused(f"adapter {path} does not load onto {base_model}: {e}") from e
        ids = tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
        result: dict[str, object] = {}

        def done(text: str, reason: str, _n: int) -> None:
            result.update(text=text, reason=reason)

        # Called on this thread: `generate` raises on failure itself (on_error is for the worker loop).
        batch.generate([Generation(ids, "canary", max_new_tokens, lambda _: None, done, lambda _: None)])
    finally:
        batch.close()
    answer = str(result["text"])
    if not answer:
        raise AdapterRefused(f"adapter {path} answered the canary prompt {prompt!r} with nothing")
    return CanaryResult(answer, str(result["reason"]), limits)
