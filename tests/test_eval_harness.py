"""The built-in suite as lm-eval tasks: documents from the validated loader, a user's suite directory, per-document scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.evaluate.harness import _scores_from_samples, task_manager

TASKS = ("general_suite_mc", "general_suite_ppl")


def _write_suite(root: Path, n_mc: int, n_ppl: int) -> Path:
    root.mkdir(parents=True)
    mc = [
        {"id": f"mc-{i}", "domain": "time", "question": f"Q{i}?", "choices": ["yes", "no"], "answer": i % 2}
        for i in range(n_mc)
    ]
    ppl = [{"id": f"p-{i}", "domain": "weather", "text": f"Rain number {i} falls."} for i in range(n_ppl)]
    (root / "multiple_choice.jsonl").write_text("\n".join(json.dumps(r) for r in mc) + "\n")
    (root / "perplexity.jsonl").write_text("\n".join(json.dumps(r) for r in ppl) + "\n")
    return root


def test_builtin_tasks_load_the_packaged_suite_offline() -> None:
    loaded = task_manager(TASKS, None).load(list(TASKS))["tasks"]
    mc = loaded["general_suite_mc"]
    assert len(mc.dataset["test"]) == 80 and len(loaded["general_suite_ppl"].dataset["test"]) == 60
    doc = mc.dataset["test"][0]
    assert mc.doc_to_text(doc) == f"Question: {doc['question']}\nAnswer:"
    assert mc.doc_to_choice(doc) == doc["choices"] and mc.doc_to_target(doc) == doc["answer"]


def test_eval_general_suite_directory_reaches_the_lm_eval_tasks(tmp_path: Path) -> None:
    """`eval.general_suite: DIR` swaps the documents behind the same task definitions."""
    suite = _write_suite(tmp_path / "mine", n_mc=3, n_ppl=2)
    loaded = task_manager(TASKS, str(suite)).load(list(TASKS))["tasks"]
    assert [d["id"] for d in loaded["general_suite_mc"].dataset["test"]] == ["mc-0", "mc-1", "mc-2"]
    assert len(loaded["general_suite_ppl"].dataset["test"]) == 2


def test_invalid_suite_file_fails_with_its_line(tmp_path: Path) -> None:
    suite = _write_suite(tmp_path / "bad", n_mc=2, n_ppl=1)
    (suite / "multiple_choice.jsonl").write_text('{"id": "x", "domain": "d", "question": "q?", "choices": ["a"]}\n')
    with pytest.raises(ValueError, match="line 1: missing field 'answer'"):
        task_manager(TASKS, str(suite)).load(["general_suite_mc"])


def test_per_document_scores_are_ordered_and_typed() -> None:
    samples = [
        {"doc_id": 1, "doc": {"domain": "b"}, "acc": 0.0},
        {"doc_id": 0, "doc": {"domain": "a"}, "acc": 1.0},
    ]
    s = _scores_from_samples("t", samples, {"acc,none": 0.5})
    assert s.kind == "accuracy" and s.doc_ids == [0, 1] and s.values == [1.0, 0.0] and s.domains == ["a", "b"]
    assert s.value == 0.5 == s.harness_value
    rolling = _scores_from_samples("w", [{"doc_id": 0, "doc": {}, "word_perplexity": (-6.0, 3)}], {})
    assert rolling.kind == "perplexity" and rolling.values == [6.0] and rolling.value == pytest.approx(2.718281828**2)
    with pytest.raises(ValueError, match=r"remove it from eval\.tasks"):
        _scores_from_samples("gen", [{"doc_id": 0, "doc": {}, "exact_match": 1.0}], {})
