"""General-ability suite for the forgetting check: texts for perplexity, items for multiple choice.

The built-in suite ships as package data (pipeline/evaluate/general_suite). Every line is validated
on load, because a silently skipped or malformed item would shift the before/after comparison
that decides whether an adapter is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pipeline.jsonl import read_jsonl_objects

PERPLEXITY_FILE = "perplexity.jsonl"
MC_FILE = "multiple_choice.jsonl"
BUILTIN_PACKAGE = "pipeline.evaluate.general_suite"


@dataclass(frozen=True)
class McItem:
    id: str
    domain: str
    question: str
    choices: tuple[str, ...]
    answer: int
    # Items sharing a group (e.g. one fact asked in several wordings) are resampled together by the
    # forgetting check's bootstrap; "" (the default) is an item on its own.
    group: str = ""


@dataclass(frozen=True)
class TextItem:
    id: str
    domain: str
    text: str


@dataclass(frozen=True)
class GeneralSuite:
    texts: tuple[str, ...]
    mc_items: tuple[McItem, ...]
    name: str
    # The perplexity texts with their ids and domains (same order as `texts`).
    text_items: tuple[TextItem, ...] = ()


def _text_field(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise ValueError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field '{key}' must be a non-empty string, got {value!r}")
    return value


def _check_id(obj: dict[str, Any], where: str, seen: dict[str, int], lineno: int) -> str:
    item_id = _text_field(obj, "id", where)
    if item_id in seen:
        raise ValueError(f"{where}: field 'id' duplicates {item_id!r} first seen on line {seen[item_id]}")
    seen[item_id] = lineno
    return item_id


def _load_texts(source: Traversable | Path, label: str) -> tuple[TextItem, ...]:
    seen: dict[str, int] = {}
    items: list[TextItem] = []
    for lineno, obj in read_jsonl_objects(source, label):
        where = f"{label} line {lineno}"
        item_id = _check_id(obj, where, seen, lineno)
        domain = _text_field(obj, "domain", where)
        items.append(TextItem(item_id, domain, _text_field(obj, "text", where)))
    return tuple(items)


def _load_mc(source: Traversable | Path, label: str) -> tuple[McItem, ...]:
    seen: dict[str, int] = {}
    items: list[McItem] = []
    for lineno, obj in read_jsonl_objects(source, label):
        where = f"{label} line {lineno}"
        item_id = _check_id(obj, where, seen, lineno)
        domain = _text_field(obj, "domain", where)
        question = _text_field(obj, "question", where)
        for key in ("choices", "answer"):
            if key not in obj:
                raise ValueError(f"{where}: missing field '{key}'")
        choices = obj["choices"]
        if not isinstance(choices, list) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise ValueError(f"{where}: field 'choices' must be a list of non-empty strings")
        if len(choices) < 2:
            raise ValueError(f"{where}: field 'choices' needs at least 2 entries, got {len(choices)}")
        answer = obj["answer"]
        # bool is an int subclass; true/false in the file is a mistake, not an index.
        if isinstance(answer, bool) or not isinstance(answer, int):
            raise ValueError(f"{where}: field 'answer' must be an integer, got {answer!r}")
        if not 0 <= answer < len(choices):
            raise ValueError(f"{where}: field 'answer' {answer} is out of range for {len(choices)} choices")
        group = obj.get("group", "")
        if not isinstance(group, str):
            raise ValueError(f"{where}: field 'group' must be a string, got {group!r}")
        items.append(McItem(item_id, domain, question, tuple(choices), answer, group))
    return tuple(items)


def load_general_suite(path: str | Path | None = None) -> GeneralSuite:
    """Load the built-in suite (path=None, via importlib.resources on package `pipeline.evaluate.general_suite`) or a directory holding the same two JSONL files."""
    if path is None:
        root: Traversable | Path = resources.files(BUILTIN_PACKAGE)
        name, prefix = "builtin", "builtin general suite "
    else:
        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"general suite directory not found: {root}")
        name, prefix = root.name, f"{root}/"
    text_items = _load_texts(root / PERPLEXITY_FILE, prefix + PERPLEXITY_FILE)
    mc_items = _load_mc(root / MC_FILE, prefix + MC_FILE)
    return GeneralSuite(texts=tuple(t.text for t in text_items), mc_items=mc_items, name=name, text_items=text_items)
