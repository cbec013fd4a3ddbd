"""Forgetting check: the general suite scored with the adapter disabled and enabled, in one process.

One model is in memory: PEFT's `disable_adapter()` gives the base model's outputs, so base and
adapter see the same prompts, tokenization and batching. Per-item scores are kept so that
confidence intervals can be computed on the paired deltas.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.config import PipelineConfig
from pipeline.formatting import IGNORE_INDEX
from pipeline.general_suite import GeneralSuite, load_general_suite
from pipeline.modeling import fingerprint_base, load_tokenizer, resolve_device
from pipeline.scoring import sequence_nll
from pipeline.train import MANIFEST, load_adapter

# A probe whose logits must change when the adapter is on; a no-op adapter measures nothing.
_PROBE = "The weather today is"


class AdapterNotAppliedError(RuntimeError):
    """The adapter's outputs equal the base model's: evaluating it would silently measure the base."""


@dataclass(frozen=True)
class SuiteScores:
    """Per-item scores of one model on the general suite."""

    text_nll: list[float]  # summed NLL per perplexity text
    text_tokens: list[int]
    mc_correct: list[bool]

    @property
    def perplexity(self) -> float:
        return math.exp(sum(self.text_nll) / sum(self.text_tokens))

    @property
    def mc_accuracy(self) -> float:
        return sum(self.mc_correct) / len(self.mc_correct)


@dataclass(frozen=True)
class ForgettingReport:
    """Base vs adapter on the same suite; deltas are adapter minus base."""

    suite: str
    base: SuiteScores
    adapter: SuiteScores

    def metrics(self) -> dict[str, float]:
        """The flat metrics logged to MLflow."""
        b, a = self.base, self.adapter
        return {
            "forgetting_ppl_base": b.perplexity,
            "forgetting_ppl_adapter": a.perplexity,
            "forgetting_ppl_delta": a.perplexity - b.perplexity,
            "forgetting_mc_acc_base": b.mc_accuracy,
            "forgetting_mc_acc_adapter": a.mc_accuracy,
            "forgetting_mc_acc_delta": a.mc_accuracy - b.mc_accuracy,
        }

    def write(self, path: str | Path) -> Path:
        """Per-item scores and metrics as JSON (an MLflow artifact)."""
        p = Path(path)
        p.write_text(json.dumps({"suite": self.suite, "metrics": self.metrics(), **asdict(self)}, indent=2))
        return p


def _suite_sequences(
    tokenizer: PreTrainedTokenizerBase, suite: GeneralSuite
) -> tuple[list[tuple[list[int], list[int]]], list[tuple[list[int], list[int]]], list[int]]:
    """Token sequences for perplexity texts and for every (question, choice) pair."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    texts = []
    for text in suite.texts:
        ids = bos + tokenizer(text, add_special_tokens=False)["input_ids"]
        texts.append((ids, ids))
    choices: list[tuple[list[int], list[int]]] = []
    n_choices: list[int] = []
    for item in suite.mc_items:
        ctx = bos + tokenizer(f"Question: {item.question}\nAnswer:", add_special_tokens=False)["input_ids"]
        for choice in item.choices:
            cont = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
            choices.append((ctx + cont, [IGNORE_INDEX] * len(ctx) + cont))
        n_choices.append(len(item.choices))
    return texts, choices, n_choices


def score_suite(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, suite: GeneralSuite, *, batch_size: int
) -> SuiteScores:
    """Perplexity texts and multiple-choice log-likelihoods (pick the choice with the lowest summed NLL)."""
    device = next(model.parameters()).device
    texts, choices, n_choices = _suite_sequences(tokenizer, suite)
    pad = int(tokenizer.pad_token_id)
    text_scores = sequence_nll(model, texts, pad_id=pad, batch_size=batch_size, device=device)
    choice_scores = sequence_nll(model, choices, pad_id=pad, batch_size=batch_size, device=device)
    correct: list[bool] = []
    pos = 0
    for item, k in zip(suite.mc_items, n_choices, strict=True):
        nlls = [s for s, _ in choice_scores[pos : pos + k]]
        correct.append(min(range(k), key=lambda i: nlls[i]) == item.answer)
        pos += k
    return SuiteScores(
        text_nll=[s for s, _ in text_scores], text_tokens=[n for _, n in text_scores], mc_correct=correct
    )


@torch.no_grad()
def assert_adapter_applied(model: PeftModel, tokenizer: PreTrainedTokenizerBase) -> float:
    """Max |logit difference| between adapter and base on a probe; raises if the adapter changes nothing."""
    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer(_PROBE)["input_ids"]], device=device)  # (1, T)
    adapted = model(input_ids=ids).logits
    with model.disable_adapter():
        base = model(input_ids=ids).logits
    diff = float((adapted.float() - base.float()).abs().max())
    if diff == 0.0:
        raise AdapterNotAppliedError(
            "adapter and base produce identical logits on the probe: the adapter is not applied "
            "or its weights are zero; refusing to report a forgetting check that measures nothing"
        )
    return diff


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


def forgetting_check(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, suite: GeneralSuite, *, batch_size: int
) -> ForgettingReport:
    """Score the suite with the adapter off, then on, with the same model object."""
    assert_adapter_applied(model, tokenizer)
    with model.disable_adapter():
        base = score_suite(model, tokenizer, suite, batch_size=batch_size)
    adapter = score_suite(model, tokenizer, suite, batch_size=batch_size)
    return ForgettingReport(suite=suite.name, base=base, adapter=adapter)


def evaluate_saved_adapter(config: PipelineConfig, adapter_dir: str | Path) -> ForgettingReport:
    """Load base + saved adapter, check the manifest against the base, and run the forgetting check."""
    adapter = Path(adapter_dir)
    device = resolve_device(config.train.device)
    tokenizer = load_tokenizer(config.base_model)
    model = load_adapter(config.base_model, adapter, device)
    manifest = json.loads((adapter / MANIFEST).read_text())
    check_manifest_matches(manifest, config.base_model, model, tokenizer)
    suite = load_general_suite(config.eval.general_suite)
    return forgetting_check(model, tokenizer, suite, batch_size=config.eval.batch_size)
