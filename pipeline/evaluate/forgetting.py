"""Forgetting check: lm-eval tasks scored with the adapter disabled and enabled, in one process.

One model is in memory: PEFT's `disable_adapter()` gives the base model's outputs, so base and
adapter see the same prompts, tokenization and batching (pipeline/evaluate/harness.py). Per-document
scores are kept and every delta gets a paired bootstrap interval (pipeline/evaluate/intervals.py).
Two guards run whenever a saved adapter is loaded: the manifest must match the base, and the
adapter must change the base's outputs. `score_suite` is an independent scorer of the built-in
suite, kept to cross-check lm-eval's numbers in tests.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.chat_format import IGNORE_INDEX, load_tokenizer
from pipeline.config import PipelineConfig
from pipeline.evaluate.general_suite import GeneralSuite
from pipeline.evaluate.harness import TaskScores, harness_forgetting_scores
from pipeline.evaluate.intervals import Interval, accuracy_delta, perplexity_change
from pipeline.train.manifest import MANIFEST, check_manifest_matches
from pipeline.train.modeling import load_adapter, resolve_device
from pipeline.train.scoring import sequence_nll

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
class TaskComparison:
    """One lm-eval (sub)task: per-document scores of base and adapter and the paired delta's interval.

    accuracy: delta = adapter - base (fraction); perplexity: delta = adapter / base - 1 (relative).
    """

    task: str
    kind: Literal["accuracy", "perplexity"]
    base: TaskScores
    adapter: TaskScores
    delta: Interval

    def metrics(self) -> dict[str, float]:
        key = "acc" if self.kind == "accuracy" else "ppl"
        change = "delta" if self.kind == "accuracy" else "change"
        p = f"forgetting_{self.task}_{key}"
        return {
            f"{p}_base": self.base.value,
            f"{p}_adapter": self.adapter.value,
            f"{p}_{change}": self.delta.estimate,
            f"{p}_{change}_low": self.delta.low,
            f"{p}_{change}_high": self.delta.high,
        }


# The built-in suite's tasks also report under the short names the first skeleton used.
_LEGACY = {"general_suite_mc": "forgetting_mc_acc", "general_suite_ppl": "forgetting_ppl"}


@dataclass(frozen=True)
class ForgettingReport:
    """Base vs adapter on every configured lm-eval task, with paired intervals on the deltas."""

    suite: str
    comparisons: list[TaskComparison]
    wall_time_s: float = 0.0
    probe_logit_diff: float = 0.0

    def comparison(self, task: str) -> TaskComparison:
        for c in self.comparisons:
            if c.task == task:
                return c
        raise KeyError(f"no forgetting result for task {task!r}; tasks run: {[c.task for c in self.comparisons]}")

    def metrics(self) -> dict[str, float]:
        """The flat metrics logged to MLflow."""
        out: dict[str, float] = {"forgetting_wall_time_s": self.wall_time_s}
        for c in self.comparisons:
            out.update(c.metrics())
            legacy = _LEGACY.get(c.task)
            if legacy:
                out[f"{legacy}_base"] = c.base.value
                out[f"{legacy}_adapter"] = c.adapter.value
                out[f"{legacy}_delta"] = c.adapter.value - c.base.value
        return out

    def write(self, path: str | Path) -> Path:
        """Per-document scores, intervals and metrics as JSON (an MLflow artifact)."""
        p = Path(path)
        p.write_text(json.dumps({"suite": self.suite, "metrics": self.metrics(), **asdict(self)}, indent=2))
        return p


def compare(
    base: dict[str, TaskScores], adapter: dict[str, TaskScores], *, samples: int, confidence: float, seed: int
) -> list[TaskComparison]:
    """Pair base and adapter scores per task (same documents, same order) and bootstrap the deltas."""
    out = []
    for name, b in base.items():
        a = adapter[name]
        if b.doc_ids != a.doc_ids or b.weights != a.weights:
            raise AssertionError(f"task {name}: base and adapter were scored on different documents")
        kw: dict[str, Any] = {"samples": samples, "confidence": confidence, "seed": seed, "groups": b.groups or None}
        if b.kind == "accuracy":
            delta = accuracy_delta(b.values, a.values, **kw)
        else:
            delta = perplexity_change((b.values, b.weights), (a.values, a.weights), **kw)
        out.append(TaskComparison(task=name, kind=b.kind, base=b, adapter=a, delta=delta))
    return out


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


def forgetting_check(model: PeftModel, tokenizer: PreTrainedTokenizerBase, config: PipelineConfig) -> ForgettingReport:
    """lm-eval on the configured tasks with the adapter off, then on, with the same model object."""
    ev = config.eval
    diff = assert_adapter_applied(model, tokenizer)
    start = time.perf_counter()
    base, adapter = harness_forgetting_scores(
        model,
        tokenizer,
        ev.tasks,
        suite_dir=ev.general_suite,
        batch_size=ev.batch_size,
        num_fewshot=ev.num_fewshot,
        limit=ev.limit,
        backend=ev.backend,
        seed=ev.seed,
    )
    comparisons = compare(base, adapter, samples=ev.bootstrap_samples, confidence=ev.confidence, seed=ev.seed)
    return ForgettingReport(
        suite=ev.general_suite or "builtin",
        comparisons=comparisons,
        wall_time_s=time.perf_counter() - start,
        probe_logit_diff=diff,
    )


def load_verified_adapter(config: PipelineConfig, adapter_dir: str | Path) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """Base + saved adapter, after both guards: the manifest matches this base, and the adapter changes outputs.

    Every consumer of a saved adapter (evaluation, registry, export) loads it through here.
    """
    adapter = Path(adapter_dir)
    manifest_path = adapter / MANIFEST
    if not manifest_path.is_file():
        raise ValueError(f"{adapter} has no {MANIFEST}; only adapters written by the training recipe can be evaluated")
    device = resolve_device(config.train.device)
    tokenizer = load_tokenizer(config.base_model, trust_remote_code=config.model.trust_remote_code)
    model = load_adapter(config.base_model, adapter, device, loading=config.model)
    check_manifest_matches(json.loads(manifest_path.read_text()), config.base_model, model, tokenizer)
    assert_adapter_applied(model, tokenizer)
    return model, tokenizer


def evaluate_saved_adapter(config: PipelineConfig, adapter_dir: str | Path) -> ForgettingReport:
    """Load base + saved adapter through the guards and run the forgetting check."""
    model, tokenizer = load_verified_adapter(config, adapter_dir)
    return forgetting_check(model, tokenizer, config)
