"""Datasets and per-document scoring for the built-in suite's lm-eval tasks.

The task YAMLs next to this file reference these functions with `!function lm_eval_tasks.<name>`,
so `lm_eval --include_path <this directory>` runs the same tasks as the pipeline. Documents come
from the validated loader (never from the hub), and `suite_dir` (passed as lm-eval task metadata)
points the tasks at a user's own suite directory with the same two JSONL files.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, List, Value

from pipeline.evaluate.general_suite import load_general_suite

_MC_FEATURES = Features(
    {
        "id": Value("string"),
        "domain": Value("string"),
        "question": Value("string"),
        "choices": List(Value("string")),
        "answer": Value("int64"),
        "group": Value("string"),
    }
)
_TEXT_FEATURES = Features({"id": Value("string"), "domain": Value("string"), "text": Value("string")})


def _dataset(rows: list[dict[str, Any]], features: Features) -> Dataset:
    """`Dataset.from_list` with declared column types and a fingerprint hashed from the rows' JSON.

    `datasets` otherwise fingerprints a new table by pickling it, which was most of lm-eval's task
    loading here (and slower still on the first call in a process).
    """
    fingerprint = hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:32]
    table = pa.Table.from_pylist(rows, schema=features.arrow_schema)
    return Dataset(table, info=DatasetInfo(features=features), fingerprint=fingerprint)


class Documents(list[dict[str, Any]]):
    """A task's documents as plain dicts, with the column `features` lm-eval reads once from a Dataset."""

    def __init__(self, dataset: Dataset) -> None:
        super().__init__(dataset.to_list())
        self.features = dataset.features


def as_documents(dataset: Dataset) -> Documents:
    """`process_docs`: lm-eval walks a task's documents about five times per forgetting check, and a Dataset
    formats every row again on each walk; `to_list()` converts the columns in one go (about 10x faster)."""
    return Documents(dataset)


def multiple_choice(suite_dir: str | None = None, **_: Any) -> dict[str, Dataset]:
    """The multiple-choice items as a `test` split: id, domain, question, choices, answer, group."""
    suite = load_general_suite(suite_dir)
    rows = [
        {
            "id": m.id,
            "domain": m.domain,
            "question": m.question,
            "choices": list(m.choices),
            "answer": m.answer,
            "group": m.group,
        }
        for m in suite.mc_items
    ]
    return {"test": _dataset(rows, _MC_FEATURES)}


def perplexity(suite_dir: str | None = None, **_: Any) -> dict[str, Dataset]:
    """The perplexity texts as a `test` split: id, domain, text."""
    suite = load_general_suite(suite_dir)
    rows = [{"id": t.id, "domain": t.domain, "text": t.text} for t in suite.text_items]
    return {"test": _dataset(rows, _TEXT_FEATURES)}


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
