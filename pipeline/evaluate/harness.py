"""General benchmarks through EleutherAI's lm-evaluation-harness, base and adapter from one model.

lm-eval owns the tasks (prompts, few-shot, metrics): the built-in offline suite is a pair of
custom tasks shipped in `pipeline/evaluate/general_suite/*.yaml`, and any standard task name
(hellaswag, arc_easy, mmlu, ...) gets the same treatment where the dataset hub is reachable.
The model is wrapped once (our "lora-pipeline" backend, or the stock `hf` HFLM as the reference) and
the task dict is built once; the base is scored inside `disable_adapter()`, so both sides share
weights, tokenizer, prompts, few-shot examples and batching. With our backend the requests are
tokenized and packed once and scored under both sides in one call (the adapter side merged where that
is exact, pipeline/evaluate/merged_adapter.py); lm-eval still evaluates each side in its own `evaluate` call.
Per-document scores come back from lm-eval's logged samples, for paired intervals.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.config import LM_EVAL_BACKEND, EvalBackend
from pipeline.evaluate.general_suite import BUILTIN_PACKAGE
from pipeline.evaluate.merged_adapter import merged_adapter

# Per-sample values lm-eval logs that the forgetting check can pair: accuracy (multiple choice)
# and (log-likelihood, words) for rolling-log-likelihood tasks (wikitext-style perplexity).
_ACCURACY_KEY = "acc"
_PERPLEXITY_KEY = "word_perplexity"


@dataclass(frozen=True)
class TaskScores:
    """Per-document scores of one model on one lm-eval task, ordered by document id."""

    task: str
    kind: Literal["accuracy", "perplexity"]
    doc_ids: list[int]
    # accuracy: 1.0/0.0 per document and weight 1; perplexity: NLL (nats) and words per document.
    values: list[float]
    weights: list[float]
    # The aggregate lm-eval itself reported, kept to cross-check our aggregation.
    harness_value: float = float("nan")
    domains: list[str] = field(default_factory=list)
    # Per document: its group in the suite ("" = on its own); the bootstrap resamples a group as one unit.
    groups: list[str] = field(default_factory=list)

    @property
    def value(self) -> float:
        """Accuracy (fraction) or word perplexity, aggregated from the per-document scores."""
        total = sum(self.values) / sum(self.weights)
        return math.exp(total) if self.kind == "perplexity" else total


def builtin_task_dir() -> Path:
    """The directory holding the built-in suite's lm-eval task YAMLs (pass it to `lm_eval --include_path`)."""
    return Path(str(resources.files(BUILTIN_PACKAGE)))


def builtin_task_names() -> set[str]:
    return {p.stem for p in builtin_task_dir().glob("*.yaml")}


def task_manager(tasks: tuple[str, ...], suite_dir: str | None) -> Any:
    """An lm-eval TaskManager that knows the built-in tasks; `suite_dir` reaches their dataset loaders
    as task metadata (simple_evaluate ignores its own `metadata` argument once a manager is given)."""
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's thousands of bundled task YAMLs takes seconds: only when a standard task is named.
    standard = [t for t in tasks if t not in builtin_task_names()]
    return TaskManager(
        include_path=str(builtin_task_dir()), include_defaults=bool(standard), metadata={"suite_dir": suite_dir}
    )


def _scores_from_samples(task: str, samples: list[dict[str, Any]], aggregate: dict[str, Any]) -> TaskScores:
    rows = sorted(samples, key=lambda s: s["doc_id"])
    if not rows:
        raise ValueError(f"lm-eval task {task!r} produced no samples; check eval.limit and the task's split")
    first = rows[0]
    domains = [str(r["doc"].get("domain", "")) if isinstance(r.get("doc"), dict) else "" for r in rows]
    groups = [str(r["doc"].get("group") or "") if isinstance(r.get("doc"), dict) else "" for r in rows]
    if _ACCURACY_KEY in first:
        return TaskScores(
            task=task,
            kind="accuracy",
            doc_ids=[int(r["doc_id"]) for r in rows],
            values=[float(r[_ACCURACY_KEY]) for r in rows],
            weights=[1.0] * len(rows),
            harness_value=float(aggregate.get(f"{_ACCURACY_KEY},none", float("nan"))),
            domains=domains,
            groups=groups,
        )
    if _PERPLEXITY_KEY in first:
        return TaskScores(
            task=task,
            kind="perplexity",
            doc_ids=[int(r["doc_id"]) for r in rows],
            values=[-float(r[_PERPLEXITY_KEY][0]) for r in rows],
            weights=[float(r[_PERPLEXITY_KEY][1]) for r in rows],
            harness_value=float(aggregate.get(f"{_PERPLEXITY_KEY},none", float("nan"))),
            domains=domains,
            groups=groups,
        )
    raise ValueError(
        f"lm-eval task {task!r} logs neither {_ACCURACY_KEY!r} nor {_PERPLEXITY_KEY!r} per document; "
        "the forgetting check supports multiple-choice and rolling log-likelihood tasks — remove it from eval.tasks"
    )


def load_tasks(task_manager: Any, tasks: tuple[str, ...], *, num_fewshot: int) -> dict[str, Any]:
    """Build lm-eval's task dict once (datasets, prompts, metrics) with simple_evaluate's few-shot override."""
    loaded = task_manager.load(list(tasks))
    for task in loaded["tasks"].values():
        # As simple_evaluate: a task whose YAML pins num_fewshot 0 stays zero-shot.
        if task.get_config("num_fewshot") != 0:
            task.set_config(key="num_fewshot", value=num_fewshot)
    return loaded


def score_tasks(lm: Any, loaded: dict[str, Any], *, limit: int | None, seed: int = 0) -> dict[str, TaskScores]:
    """Run lm-eval's `evaluate` on `lm` over a loaded task dict; per-document scores for every (sub)task.

    Calls `evaluate` rather than `simple_evaluate`: the latter reloads the tasks and collects environment
    info through subprocesses (git, pip list) on every call, which cost more than the scoring here.
    """
    import random

    import numpy as np
    from lm_eval.evaluator import evaluate

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    for task in loaded["tasks"].values():
        # Re-seed the few-shot sampler so that base and adapter see the same few-shot examples.
        task.set_fewshot_seed(seed=seed)
    results = evaluate(
        lm=lm,
        task_dict=loaded,
        limit=limit,
        bootstrap_iters=0,  # our paired intervals replace lm-eval's unpaired stderr
        log_samples=True,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results (non-zero rank); run the forgetting check in one process")
    return {
        name: _scores_from_samples(name, samples, results["results"].get(name, {}))
        for name, samples in sorted(results["samples"].items())
    }


def make_lm(model: PeftModel, tokenizer: PreTrainedTokenizerBase, *, backend: EvalBackend, batch_size: int) -> Any:
    """The lm-eval model wrapper around the already-loaded PEFT model (no second load)."""
    from lm_eval.models.huggingface import HFLM

    from pipeline.evaluate.lm_eval_backend import PipelineLM

    # lm-eval warns at length that a pre-built model ignores its loading arguments: that is the point here.
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    cls = PipelineLM if backend == LM_EVAL_BACKEND else HFLM
    return cls(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def harness_forgetting_scores(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: tuple[str, ...],
    *,
    suite_dir: str | None,
    batch_size: int,
    num_fewshot: int = 0,
    limit: int | None = None,
    backend: EvalBackend = LM_EVAL_BACKEND,
    seed: int = 0,
) -> tuple[dict[str, TaskScores], dict[str, TaskScores]]:
    """(base, adapter) per-document scores from one model and one task dict: the base inside `disable_adapter()`.

    Our backend scores each request under both sides from one tokenization and packing (`PipelineLM.paired`),
    the adapter side with the adapter merged where that is exact (`merged_adapter`); lm-eval still builds
    the requests and computes the metrics of each side in its own `evaluate` call. The stock `hf` backend,
    the reference, scores the adapter side unmerged.
    """
    from pipeline.evaluate.lm_eval_backend import PipelineLM

    lm = make_lm(model, tokenizer, backend=backend, batch_size=batch_size)
    loaded = load_tasks(task_manager(tasks, suite_dir), tasks, num_fewshot=num_fewshot)
    if not isinstance(lm, PipelineLM):
        with model.disable_adapter():
            base = score_tasks(lm, loaded, limit=limit, seed=seed)
        return base, score_tasks(lm, loaded, limit=limit, seed=seed)
    with lm.paired({"base": model.disable_adapter, "adapter": lambda: merged_adapter(model)}):
        with lm.side("base"):
            base = score_tasks(lm, loaded, limit=limit, seed=seed)
        with lm.side("adapter"):
            adapter = score_tasks(lm, loaded, limit=limit, seed=seed)
    return base, adapter
