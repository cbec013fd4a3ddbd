"""General benchmarks through EleutherAI's lm-evaluation-harness, base and adapter from one model.

lm-eval owns the tasks (prompts, few-shot, metrics): the built-in offline suite is a pair of
custom tasks shipped in `pipeline/data/general_suite/*.yaml`, and any standard task name
(hellaswag, arc_easy, mmlu, ...) gets the same treatment where the dataset hub is reachable.
The model is wrapped once (`HFLM(pretrained=<PeftModel>)`); the base is scored inside
`disable_adapter()`, so both sides share weights, tokenizer, prompts and batching.
Per-document scores come back from lm-eval's logged samples, for paired intervals.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from pipeline.general_suite import BUILTIN_PACKAGE

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
    if _ACCURACY_KEY in first:
        return TaskScores(
            task=task,
            kind="accuracy",
            doc_ids=[int(r["doc_id"]) for r in rows],
            values=[float(r[_ACCURACY_KEY]) for r in rows],
            weights=[1.0] * len(rows),
            harness_value=float(aggregate.get(f"{_ACCURACY_KEY},none", float("nan"))),
            domains=domains,
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
        )
    raise ValueError(
        f"lm-eval task {task!r} logs neither {_ACCURACY_KEY!r} nor {_PERPLEXITY_KEY!r} per document; "
        "the forgetting check supports multiple-choice and rolling log-likelihood tasks — remove it from eval.tasks"
    )


def score_tasks(
    lm: Any,
    task_manager: Any,
    tasks: tuple[str, ...],
    *,
    num_fewshot: int,
    limit: int | None,
) -> dict[str, TaskScores]:
    """Run lm-eval on `lm` (an HFLM) and return per-document scores for every (sub)task."""
    import lm_eval

    results = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(tasks),
        task_manager=task_manager,
        num_fewshot=num_fewshot,
        limit=limit,
        bootstrap_iters=0,  # our paired intervals replace lm-eval's unpaired stderr
        log_samples=True,
        random_seed=0,
        numpy_random_seed=0,
        torch_random_seed=0,
        fewshot_random_seed=0,
    )
    if results is None:
        raise RuntimeError("lm-eval returned no results (non-zero rank); run the forgetting check in one process")
    return {
        name: _scores_from_samples(name, samples, results["results"].get(name, {}))
        for name, samples in sorted(results["samples"].items())
    }


def harness_forgetting_scores(
    model: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    tasks: tuple[str, ...],
    *,
    suite_dir: str | None,
    batch_size: int,
    num_fewshot: int = 0,
    limit: int | None = None,
) -> tuple[dict[str, TaskScores], dict[str, TaskScores]]:
    """(base, adapter) per-document scores from one model: the base inside `disable_adapter()`."""
    from lm_eval.models.huggingface import HFLM

    # lm-eval warns at length that a pre-built model ignores its loading arguments: that is the point here.
    logging.getLogger("lm_eval.models.huggingface").setLevel(logging.ERROR)
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    manager = task_manager(tasks, suite_dir)
    kw: dict[str, Any] = {"num_fewshot": num_fewshot, "limit": limit}
    with model.disable_adapter():
        base = score_tasks(lm, manager, tasks, **kw)
    adapter = score_tasks(lm, manager, tasks, **kw)
    return base, adapter
