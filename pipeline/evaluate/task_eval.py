"""Task evaluation on the held-out split: loss/perplexity for base and adapter with a paired interval,
batched greedy generations (every held-out row by default) scored by exact match and ROUGE-L, their paired
intervals, McNemar and per-category means (pipeline/evaluate/task_quality.py), and a side-by-side table.

Same model object for both sides (`disable_adapter()` for the base), same prompts and template.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd
import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.chat_format import build_examples, render
from pipeline.config import PipelineConfig
from pipeline.evaluate.intervals import Interval, loss_improvement
from pipeline.evaluate.task_quality import ChampionQuality, TaskQuality, champion_quality, task_quality
from pipeline.train.modeling import add_adapter
from pipeline.train.scoring import sequence_nll


def _words(text: str) -> list[str]:
    return text.lower().split()


def exact_match(prediction: str, reference: str) -> bool:
    """Equal after lower-casing and collapsing whitespace."""
    return _words(prediction) == _words(reference)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Longest common subsequence length, O(len(a)·len(b)) with one row of memory."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over lower-cased whitespace tokens (Lin 2004, beta = 1)."""
    p, r = _words(prediction), _words(reference)
    if not p or not r:
        return float(p == r)
    lcs = _lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


@torch.no_grad()
def greedy_generate(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int,
    batch_size: int = 1,
) -> list[str]:
    """Greedy continuations of already-templated prompts, in input order: `batch_size` prompts of similar
    length at a time, left-padded (the attention mask keeps padding out; positions follow the mask)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), int(tokenizer.pad_token_id), dtype=torch.long)  # (B, T)
        mask = torch.zeros((len(idx), width), dtype=torch.long)  # (B, T)
        for row, i in enumerate(idx):
            ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i], dtype=torch.long)
            mask[row, width - len(encoded[i]) :] = 1
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )  # (B, T + new)
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    model.train(was_training)
    return out


@dataclass(frozen=True)
class TaskEvaluation:
    """Held-out loss for both sides (per example), generation scores with their intervals, and the table rows."""

    base_nll: list[float]
    adapter_nll: list[float]
    tokens: list[int]
    improvement: Interval  # base loss - adapter loss (nats/token); > 0 means the adapter is better
    side_by_side: list[dict[str, Any]] = field(default_factory=list)
    # Paired intervals, McNemar and per-category means of the side-by-side scores (None: nothing generated).
    quality: TaskQuality | None = None

    @property
    def base_loss(self) -> float:
        return sum(self.base_nll) / sum(self.tokens)

    @property
    def adapter_loss(self) -> float:
        return sum(self.adapter_nll) / sum(self.tokens)

    def _mean(self, key: str) -> float:
        rows = self.side_by_side
        return sum(float(r[key]) for r in rows) / len(rows) if rows else float("nan")

    def metrics(self) -> dict[str, float]:
        quality = self.quality.metrics() if self.quality is not None else {}
        return {
            "task_loss_base": self.base_loss,
            "task_loss_adapter": self.adapter_loss,
            "task_ppl_base": math.exp(self.base_loss),
            "task_ppl_adapter": math.exp(self.adapter_loss),
            "task_loss_improvement": self.improvement.estimate,
            "task_loss_improvement_low": self.improvement.low,
            "task_loss_improvement_high": self.improvement.high,
            "task_exact_match_base": self._mean("base_exact_match"),
            "task_exact_match_adapter": self._mean("adapter_exact_match"),
            "task_rouge_l_base": self._mean("base_rouge_l"),
            "task_rouge_l_adapter": self._mean("adapter_rouge_l"),
            "task_generated_examples": float(len(self.side_by_side)),
            **quality,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics(), **asdict(self)}


def evaluate_task(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, records: pd.DataFrame, config: PipelineConfig
) -> TaskEvaluation:
    """Held-out loss (all rows) and generations (every row, or a seeded sample of eval.generation_samples) for base
    and adapter, with the generation scores' paired intervals."""
    if records.empty:
        raise ValueError("task evaluation needs held-out rows; raise data.eval_fraction or annotate more tasks")
    ev = config.eval
    device = next(model.parameters()).device
    examples = build_examples(tokenizer, records, config.data.max_length)
    seqs = [(e.input_ids, e.labels) for e in examples]
    pad = int(tokenizer.pad_token_id)
    adapter_scores = sequence_nll(model, seqs, pad_id=pad, batch_size=ev.batch_size, device=device)
    with model.disable_adapter():
        base_scores = sequence_nll(model, seqs, pad_id=pad, batch_size=ev.batch_size, device=device)
    tokens = [n for _, n in adapter_scores]
    base_nll, adapter_nll = [s for s, _ in base_scores], [s for s, _ in adapter_scores]
    improvement = loss_improvement(
        (base_nll, tokens),
        (adapter_nll, tokens),
        samples=ev.bootstrap_samples,
        confidence=ev.confidence,
        seed=ev.seed,
    )

    rows = list(records.itertuples(index=False))
    sample = generation_rows(len(rows), ev.generation_samples, ev.seed)
    prompts = [render(tokenizer, rows[i])[0] for i in sample]
    adapter_out = greedy_generate(model, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    with model.disable_adapter():
        base_out = greedy_generate(model, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    table = []
    for i, b, a in zip(sample, base_out, adapter_out, strict=True):
        ref = str(rows[i].response)
        table.append(
            {
                "task_id": int(rows[i].task_id),
                "category": str(getattr(rows[i], "category", "")),
                "prompt": str(rows[i].prompt),
                "reference": ref,
                "base_output": b,
                "adapter_output": a,
                "base_exact_match": exact_match(b, ref),
                "adapter_exact_match": exact_match(a, ref),
                "base_rouge_l": round(rouge_l(b, ref), 4),
                "adapter_rouge_l": round(rouge_l(a, ref), 4),
            }
        )
    quality = (
        task_quality(table, samples=ev.bootstrap_samples, confidence=ev.confidence, seed=ev.seed) if table else None
    )
    return TaskEvaluation(
        base_nll=base_nll,
        adapter_nll=adapter_nll,
        tokens=tokens,
        improvement=improvement,
        side_by_side=table,
        quality=quality,
    )


def generation_rows(n: int, generation_samples: int | None, seed: int) -> list[int]:
    """Indices of the held-out rows to generate for: all of them (None), or a seeded sample in row order."""
    if generation_samples is None or generation_samples >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), generation_samples))


@dataclass(frozen=True)
class ChampionScores:
    """Another adapter (the champion) on the same held-out rows: its loss and, when generations were scored for
    ours, its generations' quality against ours."""

    task_loss: float
    quality: ChampionQuality | None = None
    # Its greedy answer to each side-by-side row's prompt (same order), for the logged comparison table.
    outputs: tuple[str, ...] = ()


def score_with_adapter(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    records: pd.DataFrame,
    adapter_dir: str,
    config: PipelineConfig,
    side_by_side: list[dict[str, Any]] | None = None,
) -> ChampionScores:
    """Held-out loss of another adapter (the champion) on the same rows, loaded next to ours on the same base
    weights: no second base in memory, same examples and batching as `evaluate_task`; and its greedy generations
    on the rows of our `side_by_side` table (same prompts), scored against the same references."""
    ev = config.eval
    name = "champion_under_test"
    add_adapter(model, adapter_dir, name)
    current = model.active_adapter
    try:
        model.set_adapter(name, inference_mode=True)
        examples = build_examples(tokenizer, records, config.data.max_length)
        scores = sequence_nll(
            model,
            [(e.input_ids, e.labels) for e in examples],
            pad_id=int(tokenizer.pad_token_id),
            batch_size=ev.batch_size,
            device=next(model.parameters()).device,
        )
        outputs: list[str] = []
        if side_by_side:
            rows = list(records.itertuples(index=False))
            sample = generation_rows(len(rows), ev.generation_samples, ev.seed)
            if [int(rows[i].task_id) for i in sample] != [int(r["task_id"]) for r in side_by_side]:
                raise ValueError(
                    "the side-by-side rows are not this eval split's generation rows; score both on one split"
                )
            prompts = [render(tokenizer, rows[i])[0] for i in sample]
            outputs = greedy_generate(model, tokenizer, prompts, ev.max_new_tokens, ev.batch_size)
    finally:
        model.set_adapter(current, inference_mode=True)
        model.delete_adapter(name)
    loss = sum(s for s, _ in scores) / sum(n for _, n in scores)
    if not side_by_side:
        return ChampionScores(loss)
    refs = [str(r["reference"]) for r in side_by_side]
    quality = champion_quality(
        side_by_side,
        [round(rouge_l(o, ref), 4) for o, ref in zip(outputs, refs, strict=True)],
        [exact_match(o, ref) for o, ref in zip(outputs, refs, strict=True)],
        samples=ev.bootstrap_samples,
        confidence=ev.confidence,
        seed=ev.seed,
    )
    return ChampionScores(loss, quality, tuple(outputs))
