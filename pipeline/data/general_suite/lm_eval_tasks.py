"""Datasets and per-document scoring for the built-in suite's lm-eval tasks.

The task YAMLs next to this file reference these functions with `!function lm_eval_tasks.<name>`,
so `lm_eval --include_path <this directory>` runs the same tasks as the pipeline. Documents come
from the validated loader (never from the hub), and `suite_dir` (passed as lm-eval task metadata)
points the tasks at a user's own suite directory with the same two JSONL files.
"""

from __future__ import annotations

import re
from typing import Any

from datasets import Dataset

from pipeline.general_suite import load_general_suite


def multiple_choice(suite_dir: str | None = None, **_: Any) -> dict[str, Dataset]:
    """The multiple-choice items as a `test` split: id, domain, question, choices, answer."""
    suite = load_general_suite(suite_dir)
    rows = [
        {"id": m.id, "domain": m.domain, "question": m.question, "choices": list(m.choices), "answer": m.answer}
        for m in suite.mc_items
    ]
    return {"test": Dataset.from_list(rows)}


def perplexity(suite_dir: str | None = None, **_: Any) -> dict[str, Dataset]:
    """The perplexity texts as a `test` split: id, domain, text."""
    suite = load_general_suite(suite_dir)
    return {"test": Dataset.from_list([{"id": t.id, "domain": t.domain, "text": t.text} for t in suite.text_items])}


def question_prompt(doc: dict[str, Any]) -> str:
    """The multiple-choice prompt; each choice is scored after it with a leading space (`target_delimiter`)."""
    return f"Question: {doc['question']}\nAnswer:"


def no_context(doc: dict[str, Any]) -> str:
    """Perplexity texts are scored whole (rolling log-likelihood), with no prompt before them."""
    return ""


def perplexity_results(doc: dict[str, Any], results: tuple[float]) -> dict[str, tuple[float, int]]:
    """Per-document (log-likelihood, weight) pairs, aggregated by lm-eval's weighted perplexities."""
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["text"].strip()))
    n_bytes = len(doc["text"].encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
