"""Property tests: validation never raises on anything the normalizer can produce, and accounts for every row."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.chat_format import load_tokenizer
from pipeline.config import PipelineConfig, ValidationConfig
from pipeline.ingest.reconcile import reconcile
from pipeline.ingest.records import normalize_tasks, records_frame
from pipeline.validate.checks import TokenCounter, chat_token_counter, validate_records
from pipeline.validate.report import failure_table, validation_markdown, validation_summary
from pipeline.validate.split import split_train_eval

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")

# Strings as Label Studio's JSON can deliver them: any code point but lone surrogates (which the
# normalizer's Arrow-backed frame cannot hold), weighted towards the troublesome ones.
EDGE = st.sampled_from(
    [" ", "  ", "\t", "\n", "\r\n", "\x00", "\x1b", "\u200b", "\u202e", "\ufeff", "\ufffd", "Ã©", "â€™", "<b>",
     "</i>", "```", "{name}", "[INSERT x]", "<placeholder>", "TODO", "é", "e\u0301", "ß", "İ", "😀", "👩‍👩‍👧",
     "字", "مرحبا", "Ω", "\u00a0", "\u2028", "a"]
)  # fmt: skip
TEXT = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.lists(EDGE, max_size=8).map("".join),
)
CATEGORY = st.one_of(st.none(), st.sampled_from([*CATEGORIES, "Schedules", "other", ""]))


@st.composite
def pair_frames(draw: Any) -> pd.DataFrame:
    n = draw(st.integers(min_value=0, max_value=6))
    rows = [
        {
            "task_id": i + 1,
            "annotation_id": draw(st.one_of(st.none(), st.integers(1, 10**9))),
            "project_id": 1,
            "prompt": draw(TEXT),
            "response": draw(TEXT),
            "category": draw(CATEGORY),
            "annotator": draw(st.text(max_size=5, alphabet="abc1")),
            "updated_at": draw(st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01T10:00:00.5+02:00", "bad", None])),
            "ground_truth": draw(st.booleans()),
            "system": draw(st.one_of(st.none(), TEXT)),
            "context": draw(st.one_of(st.none(), TEXT)),
        }
        for i in range(n)
    ]
    return records_frame(rows)


@pytest.fixture(scope="module")
def counter(tiny_model_dir: Path) -> TokenCounter:
    return chat_token_counter(load_tokenizer(str(tiny_model_dir)))


def _assert_accounted(records: pd.DataFrame, config: PipelineConfig, counter: TokenCounter | None) -> None:
    result = validate_records(records, CATEGORIES, config, token_counter=counter, previous=records)
    valid = set(result.valid["task_id"])
    bad = set(result.quarantined["task_id"])
    assert valid.isdisjoint(bad)
    assert valid | bad == set(records["task_id"])
    assert set(result.warnings["task_id"]) <= set(records["task_id"])
    # the reports and the split never raise on what validation produced
    rec = reconcile(len(records), result.valid, result.quarantined, pd.DataFrame(columns=["task_id", "reason"]))
    assert rec.accepted == len(result.valid)
    validation_markdown(rec, result.quarantined, result.checks_run, validation=result)
    validation_summary(result)
    table = failure_table(result.quarantined, result.warnings, result.dataset_checks, result.policies)
    assert table["how_to_fix"].notna().all()
    if len(result.valid) >= 2:
        train, eval_ = split_train_eval(result.valid, 0.5)
        assert len(train) + len(eval_) == len(result.valid)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=pair_frames())
def test_never_raises_and_accounts_for_every_row(records: pd.DataFrame, counter: TokenCounter) -> None:
    """Any frame the normalizer can produce (unicode edge cases, 0-6 rows) validates without raising."""
    config = PipelineConfig(data={"max_length": 64}, validation=ValidationConfig(script="latin", min_response_tokens=2))
    _assert_accounted(records, config, counter)


@settings(max_examples=30, deadline=None)
@given(records=pair_frames())
def test_never_raises_without_tokenizer(records: pd.DataFrame) -> None:
    """The same holds with default thresholds and no token counter."""
    _assert_accounted(records, PipelineConfig(), None)


@settings(max_examples=25, deadline=None)
@given(prompt=TEXT, response=TEXT)
def test_normalized_raw_task_validates(prompt: str, response: str) -> None:
    """A raw Label Studio task with arbitrary text goes through normalize -> validate without raising."""
    task = {
        "id": 1,
        "data": {"prompt": prompt},
        "annotations": [
            {
                "id": 2,
                "updated_at": "2024-05-01T10:00:00Z",
                "result": [{"from_name": "response", "value": {"text": [response]}}],
            }
        ],
    }
    norm = normalize_tasks([task])
    _assert_accounted(norm.records, PipelineConfig(), None)


def test_empty_frame(counter: TokenCounter) -> None:
    """No rows: nothing valid, nothing quarantined, min_dataset_size fails (policy error) instead of raising."""
    result = validate_records(records_frame([]), CATEGORIES, PipelineConfig(), token_counter=counter)
    assert result.valid.empty and result.quarantined.empty
    assert any("min_dataset_size" in e for e in result.errors)


def test_all_rows_failing() -> None:
    """Every row failing leaves an empty valid set and one quarantined task per row."""
    rows = [
        {"task_id": i, "annotation_id": i, "project_id": 1, "prompt": " ", "response": "", "category": None,
         "annotator": "a", "updated_at": None, "ground_truth": False, "system": None, "context": None}
        for i in range(1, 6)
    ]  # fmt: skip
    result = validate_records(records_frame(rows), CATEGORIES, PipelineConfig())
    assert result.valid.empty
    assert set(result.quarantined["task_id"]) == {1, 2, 3, 4, 5}
    assert {"not_empty", "category_in_project_choices", "not_nullable"} <= set(result.quarantined["check"])
