"""Each row and dataset check catches a crafted bad row (or dataset) and passes a clean one; policies apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.chat_format import build_examples, load_tokenizer
from pipeline.config import PipelineConfig, ValidationConfig
from pipeline.ingest.records import records_frame
from pipeline.validate.checks import ValidationFailed, ValidationResult, chat_token_counter, validate_records
from pipeline.validate.dataset_checks import leakage_check
from pipeline.validate.split import split_train_eval

CATEGORIES = ("schedules", "tickets", "lost_property", "accessibility")
# Small datasets in these tests: only the check under test may fail at dataset level.
LENIENT = {"min_rows": 0, "max_category_share": 1.0, "min_rows_per_category": 0}


def cfg(**validation: Any) -> PipelineConfig:
    return PipelineConfig(validation=ValidationConfig(**{**LENIENT, **validation}))


def row(task_id: int, **overrides: Any) -> dict[str, Any]:
    """A clean PairRecord row; overrides make it bad in one chosen way."""
    base: dict[str, Any] = {
        "task_id": task_id,
        "annotation_id": 1000 + task_id,
        "project_id": 3,
        "prompt": f"Which pier does sailing number {task_id} leave from?",
        "response": "It leaves from pier 2 at 09:30.",
        "category": "schedules",
        "annotator": "7",
        "updated_at": "2024-05-01T10:00:00Z",
        "ground_truth": False,
        "system": None,
        "context": None,
    }
    return {**base, **overrides}


def checks_for(frame: pd.DataFrame, task_id: int) -> set[str]:
    return set(frame.loc[frame["task_id"] == task_id, "check"])


def run(*rows: dict[str, Any], config: PipelineConfig | None = None, **kw: Any) -> ValidationResult:
    return validate_records(records_frame(list(rows)), CATEGORIES, config or cfg(), **kw)


BAD_TEXT = [
    ("no_doubled_whitespace", "Two  spaces here."),
    ("no_doubled_whitespace", "Para one.\n\n\nPara two."),
    ("no_doubled_whitespace", "Tab\tinside."),
    ("balanced_markup", "This is <b>bold."),
    ("balanced_markup", "Closed</i> but never opened."),
    ("balanced_markup", "```python\nprint(1)"),
    ("no_template_placeholder", "Hello {name}, your ferry leaves soon."),
    ("no_template_placeholder", "Dear {{ customer }}, thanks."),
    ("no_template_placeholder", "[INSERT ANSWER HERE]"),
    ("no_template_placeholder", "Your booking is <placeholder>."),
    ("no_template_placeholder", "TODO: write the answer."),
    ("no_control_characters", "Null\x00byte."),
    ("no_control_characters", "Zero\u200bwidth."),
    ("no_control_characters", "Colour \x1b[31mred."),
    ("no_mojibake", "The cafÃ© is on deck 2."),
    ("no_mojibake", "We donâ€™t sail on Sundays."),
    ("no_mojibake", "Broken \ufffd character."),
]
CLEAN_TEXT = [
    "One space, and\na single line break.\n\nA paragraph.",
    "Use <b>bold</b> sparingly.<br>",
    "```python\nprint(1)\n```",
    "Write {} or {1} in code; a to-do list is fine.",
    "The café is on deck 2 — don’t worry.",
    "Ferries sail daily.\tIndented? No: tab after text is doubled whitespace.",
]


@pytest.mark.parametrize("field", ["prompt", "response"])
@pytest.mark.parametrize(("check", "value"), BAD_TEXT, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD_TEXT)])
def test_text_check_catches_bad_row(check: str, value: str, field: str) -> None:
    """The crafted bad text fails its named check and is quarantined; the clean row next to it passes."""
    result = run(row(1), row(2, **{field: value}))
    assert check in checks_for(result.quarantined, 2)
    assert checks_for(result.quarantined, 1) == set()
    assert result.valid["task_id"].tolist() == [1]
    reasons = result.quarantined.loc[result.quarantined["check"] == check, "reason"]
    assert all(r.startswith(f"{field}: ") for r in reasons)


@pytest.mark.parametrize("value", CLEAN_TEXT[:5])
def test_clean_text_passes_every_text_check(value: str) -> None:
    """Single spacing, balanced allowed tags, closed fences, braces in code and correct accents all pass."""
    result = run(row(1, response=value), config=cfg(allowed_tags=("b", "br")))
    assert result.quarantined.empty, result.quarantined.to_dict("records")
    assert result.warnings.empty, result.warnings.to_dict("records")


def test_tab_after_text_is_doubled_whitespace() -> None:
    """A tab between words is a formatting habit the adapter would copy."""
    assert "no_doubled_whitespace" in checks_for(run(row(1, response=CLEAN_TEXT[5])).quarantined, 1)


def test_unknown_tag_warns_and_keeps_the_row() -> None:
    """known_markup_tags defaults to warn: the row stays, the warning names the tag's check; allowed tags pass."""
    result = run(row(1), row(2, response="Press <kbd>Enter</kbd> to book."))
    assert result.valid["task_id"].tolist() == [1, 2]
    assert checks_for(result.warnings, 2) == {"known_markup_tags"}
    allowed = run(row(2, response="Press <kbd>Enter</kbd> to book."), config=cfg(allowed_tags=("kbd",)))
    assert allowed.warnings.empty


@pytest.mark.parametrize(
    "response",
    [
        "Which pier does sailing number 2 leave from?",
        "which pier does sailing number 2 leave from",
        "You asked: Which pier does sailing number 2 leave from? Pier 2.",
    ],
)
def test_response_echoing_the_prompt(response: str) -> None:
    """A response equal to the prompt (case/punctuation aside) or repeating it fails response_not_echo."""
    result = run(row(1), row(2, response=response))
    assert checks_for(result.quarantined, 2) == {"response_not_echo"}
    assert result.quarantined.loc[result.quarantined["task_id"] == 2, "value"].iloc[0] == repr(response)


def test_short_prompt_inside_response_is_not_an_echo() -> None:
    """A short prompt ("Hello?") may appear inside a real answer."""
    result = run(row(1, prompt="Hello?", response="Hello! How can I help with your sailing?"))
    assert result.quarantined.empty


def test_script_mismatch_warns_when_declared() -> None:
    """With script: latin, a Cyrillic response is warned; without a declared script nothing is checked."""
    bad = row(2, response="Паром отправляется в девять.")
    result = run(row(1), bad, config=cfg(script="latin"))
    assert checks_for(result.warnings, 2) == {"script_matches_language"}
    assert checks_for(result.warnings, 1) == set()
    assert run(row(1), bad).warnings.empty


# ---- token length, in the base model's tokens ----


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    return load_tokenizer(str(tiny_model_dir))


def test_token_counts_match_training(tokenizer: Any) -> None:
    """The counter tokenizes exactly as training does (chat template + EOS), row for row."""
    records = records_frame([row(1), row(2, system="Be brief.", context="Pier map"), row(3, response="Yes.")])
    total, response = chat_token_counter(tokenizer)(records)
    examples = build_examples(tokenizer, records, max_length=10_000)
    assert total.tolist() == [len(e.input_ids) for e in examples]
    assert response.tolist() == [sum(1 for label in e.labels if label != -100) for e in examples]


def test_too_long_row_is_quarantined_not_truncated(tokenizer: Any) -> None:
    """A row longer than data.max_length fails within_max_length with its token count as evidence."""
    long = row(2, response=" ".join(["The ferry leaves from pier two every morning."] * 8))
    config = PipelineConfig(data={"max_length": 64}, validation=ValidationConfig(**LENIENT))
    result = run(row(1), long, config=config, token_counter=chat_token_counter(tokenizer))
    assert checks_for(result.quarantined, 2) == {"within_max_length"}
    assert int(result.quarantined["value"].iloc[0]) > 64
    assert result.valid["task_id"].tolist() == [1]
    assert "n_tokens" not in result.valid.columns
    assert "n_tokens:within_max_length" in result.checks_run


def test_too_short_response_is_quarantined(tokenizer: Any) -> None:
    """A response with fewer tokens than validation.min_response_tokens fails response_min_tokens."""
    config = cfg(min_response_tokens=6)
    result = run(row(1), row(2, response="Yes."), config=config, token_counter=chat_token_counter(tokenizer))
    assert checks_for(result.quarantined, 2) == {"response_min_tokens"}
    assert checks_for(result.quarantined, 1) == set()


# ---- policies ----


@pytest.mark.parametrize("policy", ["warn", "quarantine", "error"])
def test_policy_decides_what_a_failure_does(policy: str) -> None:
    """warn keeps the row and reports it; quarantine drops it; error drops it and makes the dataset fail."""
    result = run(row(1), row(2, response="Two  spaces."), config=cfg(policies={"no_doubled_whitespace": policy}))
    kept = 2 in set(result.valid["task_id"])
    assert kept == (policy == "warn")
    assert ("no_doubled_whitespace" in checks_for(result.warnings, 2)) == (policy == "warn")
    assert bool(result.errors) == (policy == "error")
    if policy == "error":
        with pytest.raises(ValidationFailed, match="no_doubled_whitespace"):
            result.raise_for_errors()
    else:
        result.raise_for_errors()


def test_unknown_policy_name_is_a_config_error() -> None:
    """A typo in validation.policies names the unknown check and lists the known ones."""
    with pytest.raises(ValueError, match="no_such_check"):
        ValidationConfig(policies={"no_such_check": "warn"})


# ---- dataset checks ----


def _dataset(n_per_category: dict[str, int]) -> list[dict[str, Any]]:
    rows, tid = [], 1
    for category, n in n_per_category.items():
        for _ in range(n):
            rows.append(row(tid, category=category, prompt=f"Question {tid} about {category} number {tid * 7}?"))
            tid += 1
    return rows


def _check(result: ValidationResult, name: str) -> Any:
    return next(d for d in result.dataset_checks if d.name == name)


def test_min_dataset_size_errors_by_default() -> None:
    """Fewer rows than validation.min_rows fail min_dataset_size with policy error; enough rows pass."""
    small = validate_records(records_frame(_dataset({c: 3 for c in CATEGORIES})), CATEGORIES, PipelineConfig())
    d = _check(small, "min_dataset_size")
    assert not d.passed and d.policy == "error" and d.value == 12
    with pytest.raises(ValidationFailed, match="min_dataset_size"):
        small.raise_for_errors()
    big = validate_records(records_frame(_dataset({c: 13 for c in CATEGORIES})), CATEGORIES, PipelineConfig())
    assert _check(big, "min_dataset_size").passed
    assert big.errors == ()


def test_category_balance() -> None:
    """One category above max share, or one below the minimum rows, fails; a balanced set passes."""
    config = PipelineConfig(validation=ValidationConfig(min_rows=0))
    skewed = validate_records(
        records_frame(_dataset({"schedules": 40, "tickets": 6, "lost_property": 6, "accessibility": 6})),
        CATEGORIES,
        config,
    )
    assert not _check(skewed, "category_max_share").passed
    assert _check(skewed, "category_min_rows").passed
    thin = validate_records(
        records_frame(_dataset({"schedules": 10, "tickets": 10, "lost_property": 10, "accessibility": 2})),
        CATEGORIES,
        config,
    )
    assert _check(thin, "category_max_share").passed
    assert not _check(thin, "category_min_rows").passed
    assert "accessibility" in _check(thin, "category_min_rows").detail
    even = validate_records(records_frame(_dataset({c: 6 for c in CATEGORIES})), CATEGORIES, config)
    assert _check(even, "category_max_share").passed and _check(even, "category_min_rows").passed


def test_exact_duplicate_prompts_keep_the_first_task() -> None:
    """A prompt repeated (case, punctuation, spacing aside) is quarantined for every copy but the lowest task id."""
    result = run(
        row(1),
        row(5, prompt="Which pier does sailing number 1 leave from?"),
        row(3, prompt="which pier does SAILING number 1 leave from"),
        row(2),
    )
    assert checks_for(result.quarantined, 3) == {"no_duplicate_prompts"}
    assert checks_for(result.quarantined, 5) == {"no_duplicate_prompts"}
    assert sorted(result.valid["task_id"]) == [1, 2]
    assert "task 1" in result.quarantined.loc[result.quarantined["task_id"] == 5, "reason"].iloc[0]


def test_near_duplicate_prompts_warn_and_stay_on_one_side() -> None:
    """Prompts differing by one trailing word are near-duplicates: warned, kept, never split across sides."""
    base = "When does the first morning ferry from Port Alder to Gullhaven leave on"
    days = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
    rows = [row(i + 1, prompt=f"{base} weekdays in summer {d}?") for i, d in enumerate(days)]
    rows += [
        row(10 + i, prompt=f"Completely different question number {i} about lost {i} umbrellas?") for i in range(14)
    ]
    result = run(*rows)
    near = _check(result, "no_near_duplicate_prompts")
    assert not near.passed and near.policy == "warn"
    assert checks_for(result.warnings, 2) == {"no_near_duplicate_prompts"}
    assert len(result.valid) == 20
    train, eval_ = split_train_eval(result.valid, 0.3)
    group = {1, 2, 3, 4, 5, 6}
    assert group <= set(train["task_id"]) or group <= set(eval_["task_id"])
    assert _check(result, "no_train_eval_leakage").passed


def test_leakage_check_flags_a_group_on_both_sides() -> None:
    """A near-duplicate group with rows in train and eval fails no_train_eval_leakage, naming those rows."""
    is_eval = pd.Series([True, False, False, True])
    d = leakage_check(is_eval, [0, 0, 1, 2], ValidationConfig())
    assert not d.passed and d.policy == "error"
    assert set(d.rows) == {0, 1}
    assert leakage_check(is_eval, [0, 1, 2, 3], ValidationConfig()).passed


def test_drift_against_previous_snapshot() -> None:
    """Changed category mix, response lengths and vocabulary each fail their drift check; the same data passes."""
    prev = records_frame(_dataset({c: 10 for c in CATEGORIES}))
    same = validate_records(prev, CATEGORIES, cfg(), previous=prev)
    for name in ("drift_category_shares", "drift_length", "drift_vocabulary"):
        assert _check(same, name).passed, name
    assert "no previous" in _check(validate_records(prev, CATEGORIES, cfg()), "drift_length").detail
    shifted = records_frame(
        [
            {**r, "response": ("Zebras quietly juggle violet xylophones beneath glacier observatories " * 3).strip()}
            for r in _dataset({"schedules": 30, "tickets": 10})
        ]
    )
    result = validate_records(shifted, CATEGORIES, cfg(), previous=prev)
    for name in ("drift_category_shares", "drift_length", "drift_vocabulary"):
        d = _check(result, name)
        assert not d.passed and d.policy == "warn", name
        assert d.value is not None and d.threshold is not None and d.value > d.threshold
