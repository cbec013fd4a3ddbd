"""`lora-pipeline chat`: load a base (and an adapter, checked against it) and answer with the training chat template.

Answers are greedy (the same decoding as the evaluation's side-by-side table) and streamed as they are
generated; the returned text is the decoded completion, identical to `greedy_generate` on the same prompt.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, TextIteratorStreamer

from pipeline.base_model import resolve_base
from pipeline.chat_format import load_tokenizer, render
from pipeline.config import SAFE_LOADING, ModelConfig
from pipeline.serve.adapter_source import AdapterSource
from pipeline.train.manifest import check_manifest_matches
from pipeline.train.modeling import apply_adapter, load_base_model, resolve_device
from pipeline.train.scoring import greedy_ids


@dataclass
class ChatModel:
    """A loaded model ready to answer: the base alone, or the base with its adapter."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    label: str


def load_chat_model(
    source: AdapterSource, *, base_only: bool = False, device: str = "auto", loading: ModelConfig = SAFE_LOADING
) -> ChatModel:
    """The adapter's base (its recorded reference resolved, e.g. in the model store), with the adapter applied unless
    `base_only`; refuses an adapter of another base, also when another model sits at the base's path."""
    dev = resolve_device(device)  # type: ignore[arg-type]
    base_path = resolve_base(source.base_model)
    tokenizer = load_tokenizer(base_path, trust_remote_code=loading.trust_remote_code)
    base = load_base_model(base_path, dev, loading=loading)
    check_manifest_matches({"base_model": source.base_fingerprint}, base_path, base, tokenizer)
    if base_only:
        return ChatModel(base.eval(), tokenizer, f"base {source.base_model}")
    model = apply_adapter(base, source.adapter_dir).eval()
    return ChatModel(model, tokenizer, source.description)


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str, system: str | None = None) -> str:
    """The prompt as training rendered it: chat template, generation prompt last."""
    if not prompt.strip():
        raise ValueError("the prompt is empty; type a question")
    row = SimpleNamespace(prompt=prompt, response="", system=system, context=None)
    return render(tokenizer, row)[0]


@torch.no_grad()
def answer(
    chat: ChatModel,
    prompt: str,
    *,
    system: str | None = None,
    max_new_tokens: int = 128,
    on_text: Callable[[str], Any] | None = None,
) -> str:
    """Greedy answer to `prompt`; pieces of text go to `on_text` as they are generated."""
    tok = chat.tokenizer
    device = next(chat.model.parameters()).device
    ids = torch.tensor([tok(prompt_text(tok, prompt, system), add_special_tokens=False)["input_ids"]], device=device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["ids"] = greedy_ids(chat.model, tok, ids, max_new_tokens, streamer)
        except BaseException as e:  # surfaced in the caller's thread below
            result["error"] = e
            streamer.end()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    for piece in streamer:
        if on_text is not None and piece:
            on_text(piece)
    worker.join()
    if "error" in result:
        raise result["error"]
    return tok.decode(result["ids"][0, ids.shape[1] :], skip_special_tokens=True).strip()
