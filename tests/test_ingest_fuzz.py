"""Fuzzing the export-file ingest path with malformed tasks: the only exception is the clean refusal of a file, and
every task that goes in comes out accepted, quarantined or unusable (tests/test_records_strict.py has the cases).

Tasks are valid exported tasks mutated by hypothesis (wrong types, huge ints, odd strings, missing keys, nested
junk up to 5,000 levels, extra results and annotations); bench/malformed_tasks.py holds the mutations and the
parse path, shared with the reliability report.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bench.malformed_tasks import (
    EXTRAS,
    JUNK,
    MISSING,
    PATHS,
    add_extra,
    is_clean_error,
    malformed_tasks,
    nested,
    parse_batch,
    run_malformed,
    set_path,
    to_json,
    valid_task,
)
from pipeline.ingest.client import parse_json
from pipeline.ingest.reconcile import reconcile

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**66),
    st.integers(max_value=-(2**62)),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from([s for s in JUNK if isinstance(s, str)]),
)
_values = st.one_of(
    _scalars,
    st.recursive(
        _scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)),
        max_leaves=8,
    ),
    st.sampled_from(JUNK),
    st.builds(nested, st.integers(min_value=1, max_value=5_000), st.sampled_from(["list", "dict"])),
    st.just(MISSING),
)
_mutation = st.one_of(st.tuples(st.sampled_from(PATHS), _values), st.sampled_from(EXTRAS))


@st.composite
def malformed_task(draw: st.DrawFn, i: int) -> str:
    """Task `i` (JSON text) with zero to three mutations: unmutated tasks must still be accepted alongside."""
    task = valid_task(i, annotations=draw(st.integers(min_value=1, max_value=3)))
    for mutation in draw(st.lists(_mutation, max_size=3)):
        if isinstance(mutation, str):
            add_extra(task, mutation)
        else:
            set_path(task, *mutation)
    return to_json(task)


_batches = st.integers(min_value=1, max_value=6).flatmap(
    lambda n: st.tuples(*(malformed_task(i) for i in range(1, n + 1)))
)


# Found by this fuzz (CI, 2026-12-05): an escaped lone surrogate in another annotation field than the winner's
# text (a category choice) reached the agreement table's Arrow strings and raised UnicodeEncodeError.
SURROGATE_CATEGORY = (
    '{"id": 1, "data": {"prompt": "Question 1?", "system": "You are the helpdesk.", "context": "Order 12."}, '
    '"annotations": [{"id": 10, "completed_by": 1, "result": [{"from_name": "response", "to_name": "prompt", '
    '"type": "textarea", "value": {"text": ["Answer 1.0."]}}, {"from_name": "category", "to_name": "prompt", '
    '"type": "choices", "value": {"choices": ["\\ud800 lone surrogate"]}}], "was_cancelled": false, '
    '"ground_truth": false, "created_at": "2026-01-01T00:00:00.000001Z", '
    '"updated_at": "2026-01-01T00:00:00.000001Z"}], "drafts": [], "predictions": [], "project": 7}'
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_batches)
@example((SURROGATE_CATEGORY,))
def test_malformed_batches_are_accounted_for_or_cleanly_refused(texts: tuple[str, ...]) -> None:
    """Each batch is an export file: refused with a ValueError naming it, or every task lands in one bucket."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "export.json"
        try:
            normalized = parse_batch(texts, path)
        except ValueError as e:
            assert is_clean_error(e, path), repr(e)
            return
    assert normalized.tasks_seen == len(texts)
    rec = reconcile(normalized.tasks_seen, normalized.records, normalized.quarantined, normalized.unusable)
    assert rec.accepted + rec.quarantined + rec.unusable == len(texts)
    assert normalized.records["task_id"].is_unique
    assert set(normalized.quarantined["reason"].map(bool)) <= {True}  # every quarantine has a reason
    # No wrong meaning: an accepted task (the first with its id) has only well-typed fields.
    first: dict[int, dict[str, Any]] = {}
    for text in texts:
        task = parse_json(text, "a task")  # parses: the file was not refused
        if isinstance(task, dict) and isinstance(task.get("id"), int):
            first.setdefault(task["id"], task)
    for task_id in normalized.records["task_id"]:
        assert _well_typed(first[int(task_id)]), first[int(task_id)]


def _is_id(value: object) -> bool:
    return type(value) is int and 1 <= value < 2**63


def _well_typed(task: dict[str, Any]) -> bool:
    """An independent statement of the boundary's rules for an accepted task (the oracle of the fuzz)."""
    data, anns = task.get("data"), task.get("annotations")
    ok = _is_id(task["id"]) and (task.get("project") is None or _is_id(task.get("project")))
    ok = ok and isinstance(data, dict) and all(isinstance(data.get(k), str | None) for k in ("system", "context"))
    ok = ok and isinstance(anns, list) and all(isinstance(a, dict) for a in anns)
    for a in anns if ok else []:
        ok = (
            ok
            and _is_id(a.get("id"))
            and all(isinstance(a.get(f), bool | None) for f in ("ground_truth", "was_cancelled"))
        )
        result = a.get("result") or []
        names = [r.get("from_name") for r in result if isinstance(r, dict)] if isinstance(result, list) else None
        ok = ok and names is not None and names.count("response") <= 1 and names.count("category") <= 1
    return ok


def test_unmutated_tasks_are_accepted_beside_malformed_ones(tmp_path: Path) -> None:
    """Valid tasks in the same file as malformed ones are read as they are (strictness stays per task)."""
    texts = [to_json(valid_task(i)) for i in range(1, 4)]
    bad = valid_task(4)
    set_path(bad, ("annotations", 0, "ground_truth"), "false")
    normalized = parse_batch([*texts, to_json(bad)], tmp_path / "e.json")
    assert normalized.records["task_id"].tolist() == [1, 2, 3]
    assert normalized.quarantined["check"].tolist() == ["flag_is_boolean"]


def test_seeded_generator_is_deterministic_and_nothing_is_lost(tmp_path: Path) -> None:
    """The bench's generator gives the same tasks for a seed; 2,000 of them: no traceback, nothing dropped."""
    texts = malformed_tasks(2_000, seed=1)
    assert texts == malformed_tasks(2_000, seed=1)
    assert texts != malformed_tasks(2_000, seed=2)
    failures: list[str] = []
    counts: dict[str, Any] = run_malformed(texts, workdir=tmp_path, failures=failures)
    assert counts["tracebacks"] == 0, failures[:3]
    assert counts["silently_dropped"] == 0
    buckets = ("accepted", "quarantined", "unusable", "clean_errors")
    assert sum(counts[k] for k in buckets) == counts["tasks"] == 2_000
    assert all(counts[k] > 0 for k in buckets), counts
