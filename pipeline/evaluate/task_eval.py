"""Task evaluation on the held-out split: loss/perplexity for base and adapter with a paired interval,
greedy generations on a sample scored by exact match and ROUGE-L, and a side-by-side table.

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
from pipeline.train.modeling import add_adapter
from pipeline.train.scoring import greedy_ids, sequence_nll


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
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int
) -> list[str]:
    """Greedy continuations of already-templated prompts, one at a time (no padding effects)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[str] = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]], device=device)  # (1, T)
        gen = greedy_ids(model, tokenizer, ids, max_new_tokens)
        out.append(tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True).strip())
    model.train(was_training)
    return out


@dataclass(frozen=True)
class TaskEvaluation:
    """Held-out loss for both sides (per example), generation scores on a sample, and the table rows."""

    base_nll: list[float]
    adapter_nll: list[float]
    tokens: list[int]
    improvement: Interval  # base loss - adapter loss (nats/token); > 0 means the adapter is better
    side_by_side: list[dict[str, Any]] = field(default_factory=list)

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
        }

    def as_dict(self) -> dict[str, Any]:
        return {"metrics": self.metrics(), **asdict(self)}


def evaluate_task(
    model: PeftModel, tokenizer: PreTrainedTokenizerBase, records: pd.DataFrame, config: PipelineConfig
) -> TaskEvaluation:
    """Held-out loss (all rows) and generations (a seeded sample) for base and adapter."""
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
    sample = sorted(random.Random(ev.seed).sample(range(len(rows)), min(ev.generation_samples, len(rows))))
    prompts = [render(tokenizer, rows[i])[0] for i in sample]
    adapter_out = greedy_generate(model, tokenizer, prompts, ev.max_new_tokens)
    with model.disable_adapter():
        base_out = greedy_generate(model, tokenizer, prompts, ev.max_new_tokens)
    table = []
    for i, b, a in zip(sample, base_out, adapter_out, strict=True):
        ref = str(rows[i].response)
        table.append(
            {
                "task_id": int(rows[i].task_id),
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
    return TaskEvaluation(
        base_nll=base_nll, adapter_nll=adapter_nll, tokens=tokens, improvement=improvement, side_by_side=table
    )


def held_out_loss_with_adapter(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    records: pd.DataFrame,
    adapter_dir: str,
    config: PipelineConfig,
) -> float:
    """Held-out loss of another adapter (the champion) on the same rows, loaded next to ours on the same
    base weights: no second base in memory, same examples and batching as `evaluate_task`."""
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
            batch_size=config.eval.batch_size,
            device=next(model.parameters()).device,
        )
    finally:
        model.set_adapter(current, inference_mode=True)
        model.delete_adapter(name)
    return sum(s for s, _ in scores) / sum(n for _, n in scores)
