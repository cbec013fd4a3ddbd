"""Tests for loading and validating the general (forgetting-check) suite."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pipeline.evaluate.general_suite import GeneralSuite, McItem, load_general_suite

_DROP = object()  # marks a key to remove from a row
DOMAINS = {"cooking", "weather", "arithmetic", "animals", "household", "geography", "time", "health"}


@pytest.fixture(scope="module")
def suite() -> GeneralSuite:
    return load_general_suite()


def _ppl(i: int) -> dict[str, Any]:
    return {"id": f"ppl-{i:03d}", "domain": "weather", "text": f"Paragraph number {i} about rain."}


def _mc(i: int) -> dict[str, Any]:
    return {
        "id": f"mc-{i:03d}",
        "domain": "time",
        "question": "Which is a day?",
        "choices": ["Monday", "Red"],
        "answer": 0,
    }


def _write_suite(root: Path, ppl: list[str], mc: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "perplexity.jsonl").write_text("\n".join(ppl) + "\n", encoding="utf-8")
    (root / "multiple_choice.jsonl").write_text("\n".join(mc) + "\n", encoding="utf-8")
    return root


def _good_lines(make: Any, count: int = 3) -> list[str]:
    return [json.dumps(make(i)) for i in range(1, count + 1)]


def test_builtin_loads_with_expected_sizes(suite: GeneralSuite) -> None:
    assert suite.name == "builtin"
    assert len(suite.texts) == 60
    assert len(suite.mc_items) == 80
    assert all(isinstance(item, McItem) for item in suite.mc_items)
    assert isinstance(suite.texts, tuple) and isinstance(suite.mc_items, tuple)


def test_builtin_answers_balanced_across_positions(suite: GeneralSuite) -> None:
    positions = Counter(item.answer for item in suite.mc_items)
    assert positions == {0: 20, 1: 20, 2: 20, 3: 20}


def test_builtin_items_well_formed(suite: GeneralSuite) -> None:
    assert {item.domain for item in suite.mc_items} == DOMAINS
    assert len({item.question for item in suite.mc_items}) == 80
    for item in suite.mc_items:
        assert len(item.choices) == 4
        assert len(set(item.choices)) == 4, item
        for choice in item.choices:
            assert 1 <= len(choice.split()) <= 6, choice
    for text in suite.texts:
        assert 40 <= len(text.split()) <= 80, text
        assert text == text.strip() and "  " not in text


def test_builtin_perplexity_ids_and_domains() -> None:
    import importlib.resources

    raw = importlib.resources.files("pipeline.evaluate.general_suite").joinpath("perplexity.jsonl").read_text()
    rows = [json.loads(line) for line in raw.splitlines()]
    assert [r["id"] for r in rows] == [f"ppl-{i:03d}" for i in range(1, 61)]
    assert {r["domain"] for r in rows} == DOMAINS


def test_directory_suite_uses_directory_name(tmp_path: Path) -> None:
    root = _write_suite(tmp_path / "my_suite", _good_lines(_ppl), _good_lines(_mc))
    loaded = load_general_suite(root)
    assert loaded.name == "my_suite"
    assert loaded.texts[1] == "Paragraph number 2 about rain."
    assert loaded.mc_items[0] == McItem("mc-001", "time", "Which is a day?", ("Monday", "Red"), 0)
    assert load_general_suite(str(root)) == loaded


def test_blank_lines_are_skipped_but_counted(tmp_path: Path) -> None:
    mc = [json.dumps(_mc(1)), "", json.dumps({**_mc(2), "answer": 5})]
    root = _write_suite(tmp_path / "s", _good_lines(_ppl), mc)
    with pytest.raises(ValueError, match=r"multiple_choice\.jsonl line 3: field 'answer'"):
        load_general_suite(root)


def _mc_with(line2: str) -> list[str]:
    return [json.dumps(_mc(1)), line2, json.dumps(_mc(3))]


def _mc_changed(**changes: Any) -> str:
    row = {**_mc(2), **changes}
    return json.dumps({k: v for k, v in row.items() if v is not _DROP})


MC_CASES: dict[str, tuple[str, str]] = {
    "bad_json": ('{"id": "mc-002", "domain": ', "invalid JSON"),
    "not_object": ("[1, 2, 3]", "JSON object"),
    "missing_question": (_mc_changed(question=_DROP), "field 'question'"),
    "missing_choices": (_mc_changed(choices=_DROP), "field 'choices'"),
    "missing_answer": (_mc_changed(answer=_DROP), "field 'answer'"),
    "question_not_str": (_mc_changed(question=7), "field 'question'"),
    "choices_not_list": (_mc_changed(choices="Monday, Red"), "field 'choices'"),
    "choice_not_str": (_mc_changed(choices=["Monday", 3]), "field 'choices'"),
    "one_choice": (_mc_changed(choices=["Monday"]), "field 'choices'"),
    "answer_str": (_mc_changed(answer="0"), "field 'answer'"),
    "answer_bool": (_mc_changed(answer=True), "field 'answer'"),
    "answer_negative": (_mc_changed(answer=-1), "field 'answer'"),
    "answer_too_big": (_mc_changed(answer=2), "field 'answer'"),
    "duplicate_id": (_mc_changed(id="mc-001"), "field 'id'"),
    "id_not_str": (_mc_changed(id=2), "field 'id'"),
    "group_not_str": (_mc_changed(group=3), "field 'group'"),
}


@pytest.mark.parametrize("case", sorted(MC_CASES))
def test_bad_multiple_choice_line_raises_with_line_number(tmp_path: Path, case: str) -> None:
    line, fragment = MC_CASES[case]
    root = _write_suite(tmp_path / case, _good_lines(_ppl), _mc_with(line))
    with pytest.raises(ValueError) as info:
        load_general_suite(root)
    message = str(info.value)
    assert "multiple_choice.jsonl" in message
    assert "line 2" in message
    assert fragment in message


def _ppl_changed(**changes: Any) -> str:
    row = {**_ppl(2), **changes}
    return json.dumps({k: v for k, v in row.items() if v is not _DROP})


PPL_CASES: dict[str, tuple[str, str]] = {
    "bad_json": ("not json at all", "invalid JSON"),
    "missing_text": (_ppl_changed(text=_DROP), "field 'text'"),
    "missing_domain": (_ppl_changed(domain=_DROP), "field 'domain'"),
    "text_not_str": (_ppl_changed(text=["a", "b"]), "field 'text'"),
    "empty_text": (_ppl_changed(text="   "), "field 'text'"),
    "duplicate_id": (_ppl_changed(id="ppl-001"), "field 'id'"),
}


@pytest.mark.parametrize("case", sorted(PPL_CASES))
def test_bad_perplexity_line_raises_with_line_number(tmp_path: Path, case: str) -> None:
    line, fragment = PPL_CASES[case]
    ppl = [json.dumps(_ppl(1)), line, json.dumps(_ppl(3))]
    root = _write_suite(tmp_path / case, ppl, _good_lines(_mc))
    with pytest.raises(ValueError) as info:
        load_general_suite(root)
    message = str(info.value)
    assert "perplexity.jsonl" in message
    assert "line 2" in message
    assert fragment in message


def test_duplicate_id_message_points_at_first_line(tmp_path: Path) -> None:
    root = _write_suite(tmp_path / "dup", _good_lines(_ppl), _mc_with(_mc_changed(id="mc-001")))
    with pytest.raises(ValueError, match="first seen on line 1"):
        load_general_suite(root)


def test_empty_file_raises(tmp_path: Path) -> None:
    root = _write_suite(tmp_path / "empty", _good_lines(_ppl), [""])
    with pytest.raises(ValueError, match=r"multiple_choice\.jsonl: file holds no records"):
        load_general_suite(root)


def test_missing_directory_or_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_general_suite(tmp_path / "nope")
    root = tmp_path / "half"
    root.mkdir()
    (root / "perplexity.jsonl").write_text(json.dumps(_ppl(1)) + "\n", encoding="utf-8")
    with pytest.raises(FileNotFoundError, match=r"multiple_choice\.jsonl"):
        load_general_suite(root)
