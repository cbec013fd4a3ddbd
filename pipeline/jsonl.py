"""Read JSONL files of objects with errors that name the file and line."""

from __future__ import annotations

import json
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any


def read_jsonl_objects(source: Traversable | Path, label: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) pairs of a JSONL file, skipping blank lines; a `ValueError` names the bad line.

    `label` names the file in errors. A missing file raises FileNotFoundError; an empty one, ValueError.
    """
    if not source.is_file():
        raise FileNotFoundError(f"{label}: file not found")
    out: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{label} line {lineno}: invalid JSON ({exc.msg}); one JSON object per line") from None
        except (ValueError, RecursionError) as exc:  # a 4,300+ digit number; nesting past the recursion limit
            raise ValueError(
                f"{label} line {lineno}: unusable JSON ({type(exc).__name__}); one JSON object per line"
            ) from None
        if not isinstance(obj, dict):
            raise ValueError(f"{label} line {lineno}: expected a JSON object, got {type(obj).__name__}")
        out.append((lineno, obj))
    if not out:
        raise ValueError(f"{label}: file holds no records")
    return out
