"""Tests for normalizing Label Studio tasks into PairRecords (pipeline/ingest/records.py).

Task dicts are shaped like Label Studio's API / JSON export (API_NOTES.md section 1).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.ingest.records import PAIR_COLUMNS, QUARANTINE_COLUMNS, UNUSABLE_COLUMNS, NormalizedTasks, normalize_tasks
from pipeline.validate.checks import validate_records

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")
_MISSING = object()  # a task whose data has no prompt key at all


def textarea(*texts: object, from_name: str = "response") -> dict[str, Any]:
    """A TextArea result item as Label Studio stores it."""
    return {"from_name": from_name, "to_name": "prompt", "type": "textarea", "value": {"text": list(texts)}}


def choices(*chosen: object, from_name: str = "category") -> dict[str, Any]:
    """A Choices result item as Label Studio stores it."""
    return {"from_name": from_name, "to_name": "prompt", "type": "choices", "value": {"choices": list(chosen)}}


def annotation(
    ann_id: int,
    *,
    response: str = "The 09:30 ferry leaves from pier 2.",
    category: str | None = "schedules",
    updated_at: str = "2024-05-01T10:00:00.000001Z",
    completed_by: object = 7,
    ground_truth: bool = False,
    was_cancelled: bool = False,
    result: list[Any] | None = None,
) -> dict[str, Any]:
    """An exported annotation with the keys the normalizer reads (plus a few it ignores)."""
    if result is None:
        result = [textarea(response)] + ([choices(category)] if category is not None else [])
    return {
        "id": ann_id,
        "completed_by": completed_by,
        "result": result,
        "was_cancelled": was_cancelled,
        "ground_truth": ground_truth,
        "created_at": updated_at,
        "updated_at": updated_at,
        "lead_time": 12.5,
        "result_count": len(result),
        "task": None,
        "project": 3,
    }


def task(
    task_id: object,
    annotations: list[dict[str, Any]] | None = None,
    *,
    prompt: object = "When does the first ferry leave?",
    drafts: list[dict[str, Any]] | None = None,
    **data: object,
) -> dict[str, Any]:
    """An exported task: id, data, annotations, drafts and a few other keys."""
    payload: dict[str, Any] = {"prompt": prompt, **data}
    if prompt is _MISSING:
        del payload["prompt"]
    return {
        "id": task_id,
        "data": payload,
        "annotations": annotations or [],
        "drafts": drafts or [],
        "predictions": [],
        "meta": {},
        "project": 3,
        "total_annotations": len(annotations or []),
        "cancelled_annotations": sum(bool(a.get("was_cancelled")) for a in annotations or []),
    }


def only_record(result: NormalizedTasks) -> pd.Series:
    """The single accepted record of a one-task pull."""
    assert result.quarantined.empty, result.quarantined.to_dict("records")
    assert result.unusable.empty, result.unusable.to_dict("records")
    assert len(result.records) == 1
    return result.records.iloc[0]


def only_quarantine(result: NormalizedTasks) -> pd.Series:
    """The single quarantine row of a one-task pull."""
    assert result.records.empty
    assert result.unusable.empty
    assert len(result.quarantined) == 1
    return result.quarantined.iloc[0]


def test_output_frames_have_contract_columns() -> None:
    """Records, quarantine and unusable frames carry the contract's columns in order, even when empty."""
    result = normalize_tasks([])
    assert list(result.records.columns) == list(PAIR_COLUMNS)
    assert list(result.quarantined.columns) == list(QUARANTINE_COLUMNS)
    assert list(result.unusable.columns) == list(UNUSABLE_COLUMNS)
    assert result.tasks_seen == 0


def test_ground_truth_wins_over_newer_annotation() -> None:
    """A ground-truth annotation wins even when another submitted annotation is more recent."""
    anns = [
        annotation(11, response="ground truth", ground_truth=True, updated_at="2024-05-01T10:00:00.000001Z"),
        annotation(12, response="newer", updated_at="2024-05-03T10:00:00.000001Z"),
    ]
    rec = only_record(normalize_tasks([task(1, anns)]))
    assert rec["annotation_id"] == 11
    assert rec["response"] == "ground truth"
    assert bool(rec["ground_truth"]) is True


def test_most_recent_submitted_wins_without_ground_truth() -> None:
    """Without ground truth the most recently updated submitted annotation wins, whatever the list order."""
    anns = [
        annotation(21, response="middle", updated_at="2024-05-02T10:00:00.000001Z"),
        annotation(22, response="newest", updated_at="2024-05-03T10:00:00.000001Z"),
        annotation(23, response="oldest", updated_at="2024-05-01T10:00:00.000001Z"),
    ]
    for order in (anns, anns[::-1]):
        rec = only_record(normalize_tasks([task(1, order)]))
        assert rec["annotation_id"] == 22
        assert rec["response"] == "newest"
        assert not rec["ground_truth"]


def test_most_recent_ground_truth_wins_among_several() -> None:
    """With several ground-truth annotations the most recent of them wins (non-GT ones are ignored)."""
    anns = [
        annotation(31, response="gt old", ground_truth=True, updated_at="2024-05-01T10:00:00.000001Z"),
        annotation(32, response="gt new", ground_truth=True, updated_at="2024-05-02T10:00:00.000001Z"),
        annotation(33, response="plain newest", updated_at="2024-05-09T10:00:00.000001Z"),
    ]
    assert only_record(normalize_tasks([task(1, anns)]))["annotation_id"] == 32


def test_tie_on_updated_at_broken_by_higher_annotation_id() -> None:
    """Equal timestamps are broken by the higher annotation id, so the winner never depends on list order."""
    anns = [annotation(41, response="lower id"), annotation(45, response="higher id")]
    for order in (anns, anns[::-1]):
        assert only_record(normalize_tasks([task(1, order)]))["annotation_id"] == 45


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("2024-05-01T10:00:00Z", "2024-05-01T10:00:00.500000Z"),
        ("2024-05-01T10:00:00+00:00", "2024-05-01T09:00:00-05:00"),
    ],
    ids=["fractional-seconds", "utc-offsets"],
)
def test_most_recent_wins_across_timestamp_formats(older: str, newer: str) -> None:
    """ "Most recently updated" compares instants, not strings: precision and UTC offset do not matter."""
    anns = [annotation(51, response="older", updated_at=older), annotation(50, response="newer", updated_at=newer)]
    assert only_record(normalize_tasks([task(1, anns)]))["annotation_id"] == 50


def test_mixed_timestamp_formats_all_parse() -> None:
    """Every valid ISO 8601 updated_at parses, whatever the format of the other rows in the pull."""
    tasks = [
        task(1, [annotation(11, updated_at="2024-05-01T10:00:00.123456Z")]),
        task(2, [annotation(12, updated_at="2024-05-01T10:00:00Z")]),
        task(3, [annotation(13, updated_at="2024-05-01T12:00:00+02:00")]),
    ]
    records = normalize_tasks(tasks).records
    assert records["updated_at"].notna().all(), records["updated_at"].tolist()


def test_cancelled_annotations_never_win() -> None:
    """A skipped annotation never wins, even when it is the newest and marked ground truth."""
    anns = [
        annotation(61, response="skipped", was_cancelled=True, ground_truth=True, updated_at="2024-06-01T00:00:00.1Z"),
        annotation(62, response="submitted", updated_at="2024-05-01T00:00:00.1Z"),
    ]
    rec = only_record(normalize_tasks([task(1, anns)]))
    assert rec["annotation_id"] == 62
    assert rec["response"] == "submitted"


def test_only_cancelled_is_unusable_only_skipped() -> None:
    """A task whose annotations were all skipped has no usable annotation: reason `only_skipped`."""
    anns = [annotation(71, was_cancelled=True), annotation(72, was_cancelled=True, result=[])]
    result = normalize_tasks([task(1, anns)])
    assert result.records.empty and result.quarantined.empty
    assert result.unusable.to_dict("records") == [{"task_id": 1, "reason": "only_skipped"}]


def test_no_annotations_is_unusable_no_annotation() -> None:
    """A task nobody annotated is accounted for as `no_annotation`."""
    result = normalize_tasks([task(1, [])])
    assert result.unusable.to_dict("records") == [{"task_id": 1, "reason": "no_annotation"}]
    assert result.records.empty and result.quarantined.empty


def test_only_drafts_is_unusable_only_drafts() -> None:
    """Drafts live outside `annotations` and never reach training: a drafts-only task is `only_drafts`."""
    draft = {"id": 5, "result": [textarea("draft text")], "user": "a@example.com"}
    result = normalize_tasks([task(1, [], drafts=[draft])])
    assert result.unusable.to_dict("records") == [{"task_id": 1, "reason": "only_drafts"}]
    assert result.records.empty and result.quarantined.empty


def test_drafts_do_not_replace_a_submitted_annotation() -> None:
    """When a task has a submitted annotation and a draft, the submitted text is used."""
    draft = {"id": 5, "result": [textarea("draft text")]}
    rec = only_record(normalize_tasks([task(1, [annotation(81, response="submitted")], drafts=[draft])]))
    assert rec["response"] == "submitted"


def test_empty_result_is_unusable_empty_response() -> None:
    """A submitted annotation with an empty result has no response: reason `empty_response`."""
    result = normalize_tasks([task(1, [annotation(91, result=[])])])
    assert result.unusable.to_dict("records") == [{"task_id": 1, "reason": "empty_response"}]
    assert result.records.empty and result.quarantined.empty


@pytest.mark.parametrize("prompt", [_MISSING, None, 42, ["a", "list"], {"text": "dict"}])
def test_prompt_must_be_text(prompt: object) -> None:
    """A missing or non-string data.prompt quarantines the task under `prompt_is_text`."""
    q = only_quarantine(normalize_tasks([task(1, [annotation(101)], prompt=prompt)]))
    assert q["check"] == "prompt_is_text"
    assert q["stage"] == "normalize"
    assert q["task_id"] == 1
    assert q["annotation_id"] == 101
    assert "prompt" in q["reason"]


def test_task_without_data_is_prompt_is_text() -> None:
    """A task with no `data` at all is quarantined (not crashed on) as `prompt_is_text`."""
    t = task(1, [annotation(102)])
    del t["data"]
    assert only_quarantine(normalize_tasks([t]))["check"] == "prompt_is_text"


def test_results_from_unknown_from_name_are_quarantined() -> None:
    """Results made with another labeling config (e.g. LS's SFT template `instruction`) are `result_matches_config`."""
    ann = annotation(111, result=[textarea("an answer", from_name="instruction")])
    q = only_quarantine(normalize_tasks([task(1, [ann])]))
    assert q["check"] == "result_matches_config"
    assert q["annotation_id"] == 111
    assert "instruction" in q["value"]
    assert "instruction" in q["reason"]


def test_two_categories_are_quarantined_single_category() -> None:
    """Choosing more than one category quarantines the task as `single_category`."""
    ann = annotation(121, result=[textarea("text"), choices("schedules", "tickets")])
    q = only_quarantine(normalize_tasks([task(1, [ann])]))
    assert q["check"] == "single_category"
    assert "schedules" in q["value"] and "tickets" in q["value"]


def test_non_string_response_is_quarantined() -> None:
    """A TextArea whose text is not a string is quarantined as `response_is_text`."""
    ann = annotation(131, result=[textarea(123), choices("tickets")])
    assert only_quarantine(normalize_tasks([task(1, [ann])]))["check"] == "response_is_text"


def test_missing_category_is_kept_as_none() -> None:
    """Normalization keeps a row without a Choices result (category None); validation decides about it."""
    rec = only_record(normalize_tasks([task(1, [annotation(141, category=None)])]))
    assert rec["category"] is None


def test_duplicate_task_id_second_copy_quarantined() -> None:
    """The first task with an id is normalized; later copies are quarantined as `task_id_duplicate`."""
    first = task(7, [annotation(151, response="first copy")])
    second = task(7, [annotation(152, response="second copy")])
    result = normalize_tasks([first, second])
    assert result.records["task_id"].tolist() == [7]
    assert result.records["response"].tolist() == ["first copy"]
    assert result.quarantined[["task_id", "check"]].to_dict("records") == [{"task_id": 7, "check": "task_id_duplicate"}]
    assert result.tasks_seen == 2


@pytest.mark.parametrize("bad_id", [None, "5", 5.0, True])
def test_non_int_task_id_is_quarantined(bad_id: object) -> None:
    """A task whose id is not an int (bools included) is quarantined as `task_id_invalid` with no task id."""
    q = only_quarantine(normalize_tasks([task(bad_id, [annotation(161)])]))
    assert q["check"] == "task_id_invalid"
    assert q["task_id"] is None or pd.isna(q["task_id"])
    assert q["value"] == repr(bad_id)


def test_record_fields() -> None:
    """The record keeps the winner's id, the annotator as a string, updated_at in UTC, ground truth and extras."""
    ann = annotation(
        171,
        response="Yes, step-free access at pier 1.",
        category="accessibility",
        updated_at="2024-05-01T12:30:00.250000+02:00",
        completed_by=7,
        ground_truth=True,
    )
    t = task(9, [ann], prompt="Is pier 1 step-free?", system="You are the ferry helpdesk.")
    rec = only_record(normalize_tasks([t], project_id=99))
    assert rec["task_id"] == 9
    assert rec["annotation_id"] == 171
    assert rec["project_id"] == 3  # the task's own project wins over the fallback
    assert rec["prompt"] == "Is pier 1 step-free?"
    assert rec["response"] == "Yes, step-free access at pier 1."
    assert rec["category"] == "accessibility"
    assert rec["annotator"] == "7"
    assert isinstance(rec["annotator"], str)
    assert rec["updated_at"] == pd.Timestamp("2024-05-01T10:30:00.25", tz="UTC")
    assert str(rec["updated_at"].tz) == "UTC"
    assert bool(rec["ground_truth"]) is True
    assert rec["system"] == "You are the ferry helpdesk."
    assert rec["context"] is None  # absent (a non-string is quarantined: tests/test_records_strict.py)


def test_record_dtypes_and_fallbacks() -> None:
    """Dtypes follow the contract; an expanded completed_by gives its email; project_id falls back."""
    t = task(4, [annotation(181, completed_by={"id": 3, "email": "ann@example.com"})])
    del t["project"]
    result = normalize_tasks([t], project_id=12)
    rec = only_record(result)
    assert rec["annotator"] == "ann@example.com"
    assert rec["project_id"] == 12
    assert rec["system"] is None and rec["context"] is None
    dtypes = result.records.dtypes
    assert dtypes["task_id"] == "int64"
    assert dtypes["annotation_id"] == "Int64"
    assert isinstance(dtypes["updated_at"], pd.DatetimeTZDtype)
    assert str(dtypes["updated_at"].tz) == "UTC"
    assert dtypes["ground_truth"] == "bool"


def test_multiline_textarea_joined() -> None:
    """Several TextArea texts in one submission are joined line by line."""
    ann = annotation(191, result=[textarea("line one", "line two"), choices("tickets")])
    assert only_record(normalize_tasks([task(1, [ann])]))["response"] == "line one\nline two"


def test_every_task_lands_in_exactly_one_bucket() -> None:
    """A mixed pull: records + quarantined + unusable == tasks_seen, and each task id appears once."""
    tasks = [
        task(1, [annotation(1)]),
        task(2, [annotation(2, was_cancelled=True)]),
        task(3, []),
        task(4, [], drafts=[{"id": 1, "result": []}]),
        task(5, [annotation(5, result=[])]),
        task(6, [annotation(6)], prompt=None),
        task(7, [annotation(7, result=[textarea("x", from_name="instruction")])]),
        task(8, [annotation(8, result=[textarea("x"), choices("a", "b")])]),
        task(1, [annotation(9)]),
        task("10", [annotation(10)]),
        task(11, [annotation(11, ground_truth=True), annotation(12)]),
    ]
    result = normalize_tasks(tasks)
    assert result.tasks_seen == len(tasks)
    assert len(result.records) + len(result.quarantined) + len(result.unusable) == result.tasks_seen
    assert sorted(result.records["task_id"]) == [1, 11]
    assert dict(zip(result.unusable["task_id"], result.unusable["reason"], strict=True)) == {
        2: "only_skipped",
        3: "no_annotation",
        4: "only_drafts",
        5: "empty_response",
    }
    assert sorted(result.quarantined["check"]) == sorted(
        ["prompt_is_text", "result_matches_config", "single_category", "task_id_duplicate", "task_id_invalid"]
    )
    assert set(result.quarantined["stage"]) == {"normalize"}


# ---- property test: arbitrary task-like input never crashes and is always accounted for ----


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """`good` about 70% of the time, else `bad` (nested `one_of`s flatten, so they cannot weight)."""
    return st.integers(0, 9).flatmap(lambda k: good if k < 7 else bad)


# Well-formed shapes dominate so that many examples become records and reach validation; the
# other branches are the malformed shapes a real export or a hand-edited file could hold.
_junk = st.one_of(st.integers(), st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
# clean text, or any unicode (control characters, surrogates aside, and stray whitespace included)
_texts = mostly(
    st.sampled_from(["When is the last ferry?", "Pier 2, 09:30.", "Ja — natürlich ✓"]), st.text(max_size=20)
)
_timestamps = mostly(
    st.sampled_from(["2024-05-01T10:00:00.123456Z", "2024-05-02T08:00:00.5+02:00", "2023-12-31T23:59:59.999999Z"]),
    st.one_of(st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01"]), st.none(), st.text(max_size=12)),
)
_result_items = mostly(
    st.one_of(
        st.builds(lambda ts: textarea(*ts), st.lists(_texts, min_size=1, max_size=2)),
        st.builds(lambda c: choices(c), st.one_of(st.sampled_from(CATEGORIES), _texts)),
    ),
    st.one_of(
        st.builds(lambda ts: textarea(*ts), st.lists(st.one_of(_texts, _junk), max_size=3)),
        st.builds(lambda cs: choices(*cs), st.lists(st.one_of(st.sampled_from(CATEGORIES), _texts, _junk), max_size=3)),
        st.builds(lambda t: textarea(t, from_name="instruction"), _texts),
        st.fixed_dictionaries(
            {"from_name": st.sampled_from(["response", "category"]), "value": st.one_of(_junk, st.just({"text": "s"}))}
        ),
        _junk,
    ),
)
_annotations = st.fixed_dictionaries(
    {
        "id": mostly(st.integers(min_value=1, max_value=50), st.sampled_from([None, 0])),
        "was_cancelled": mostly(st.just(False), st.just(True)),
        "ground_truth": st.booleans(),
        "updated_at": _timestamps,
        "completed_by": st.one_of(st.integers(), st.none(), _texts, st.fixed_dictionaries({"email": _junk})),
        "result": mostly(st.lists(_result_items, min_size=1, max_size=3), st.sampled_from([[], None])),
    }
)
_data = mostly(
    st.fixed_dictionaries(
        {"prompt": mostly(_texts, st.one_of(st.integers(), st.none()))},
        optional={"system": st.one_of(_texts, _junk), "context": st.one_of(_texts, _junk)},
    ),
    st.none(),
)
_tasks = st.fixed_dictionaries(
    {
        # a small id range so that ids collide; None, bools and strings are invalid ids
        "id": mostly(st.integers(min_value=1, max_value=8), st.one_of(st.none(), st.booleans(), st.text(max_size=3))),
        "data": _data,
        "annotations": mostly(st.lists(mostly(_annotations, st.none()), min_size=1, max_size=3), st.none()),
    },
    optional={"drafts": st.lists(st.just({"result": []}), max_size=1)},
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_tasks, max_size=8))
def test_normalize_and_validate_account_for_arbitrary_tasks(tasks: list[dict[str, Any]]) -> None:
    """Arbitrary task-like input never crashes normalize or validate, and no task is lost on the way."""
    result = normalize_tasks(tasks)
    assert result.tasks_seen == len(tasks)
    assert len(result.records) + len(result.quarantined) + len(result.unusable) == result.tasks_seen
    assert result.records["task_id"].is_unique

    validation = validate_records(result.records, CATEGORIES)
    valid_ids = set(validation.valid["task_id"].astype(int))
    bad_ids = set(validation.quarantined["task_id"].astype(int))
    assert valid_ids.isdisjoint(bad_ids)
    assert valid_ids | bad_ids == set(result.records["task_id"].astype(int))
    assert len(validation.valid) == len(valid_ids)
    assert set(validation.quarantined["stage"]) <= {"validate"}


# ---- the `majority` rule and text problems found while normalizing ----


def test_majority_rule_picks_the_category_most_annotators_chose() -> None:
    """Two of three say `tickets`: the latest `tickets` annotation wins, although a `schedules` one is newer."""
    anns = [
        annotation(1, category="tickets", updated_at="2024-05-01T10:00:00Z"),
        annotation(2, category="tickets", updated_at="2024-05-01T11:00:00Z", response="Tickets at the kiosk."),
        annotation(3, category="schedules", updated_at="2024-05-01T12:00:00Z"),
    ]
    rec = only_record(normalize_tasks([task(1, anns)], rule="majority"))
    assert rec["annotation_id"] == 2 and rec["category"] == "tickets"
    assert only_record(normalize_tasks([task(1, anns)]))["annotation_id"] == 3  # the default rule: latest


def test_majority_tie_is_quarantined_and_ground_truth_still_wins() -> None:
    """A 1-1 split is reported as a tie for adjudication; a ground-truth annotation settles it."""
    anns = [annotation(1, category="tickets"), annotation(2, category="schedules")]
    q = only_quarantine(normalize_tasks([task(1, anns)], rule="majority"))
    assert q["check"] == "category_majority_tie" and "tickets" in q["value"] and "schedules" in q["value"]
    gt = annotation(3, category="schedules", ground_truth=True, updated_at="2024-01-01T00:00:00Z")
    assert only_record(normalize_tasks([task(1, [*anns, gt])], rule="majority"))["annotation_id"] == 3


@pytest.mark.parametrize(
    ("prompt", "check"),
    [
        ("x" * 100_001, "text_too_long"),
        ("bad \ud800 surrogate", "valid_unicode"),
        ("bell \x07 here", "no_control_characters"),
        ("c1 \x85 control", "no_control_characters"),
    ],
)
def test_unstorable_or_unsafe_text_is_quarantined(prompt: str, check: str) -> None:
    """Texts that cannot be stored (surrogates) or trained on as is are quarantined with the named check."""
    q = only_quarantine(normalize_tasks([task(1, [annotation(1)], prompt=prompt)]))
    assert q["check"] == check and q["stage"] == "normalize"
    q["value"].encode("utf-8")  # the report value itself is storable


def test_tabs_newlines_and_markup_are_plain_text() -> None:
    """Tabs, newlines and HTML are ordinary text: kept verbatim, never rendered or followed."""
    prompt = "Line one\n\t<a href='http://x'>link</a>"
    assert only_record(normalize_tasks([task(1, [annotation(1)], prompt=prompt)]))["prompt"] == prompt
