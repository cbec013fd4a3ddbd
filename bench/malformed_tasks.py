"""Malformed Label Studio export tasks from a seed, and what the export-file parse path makes of them.

    python -m bench.malformed_tasks --n 10000 --seed 0    # prints the counts as JSON

`malformed_tasks(n, seed)` mutates valid exported tasks (wrong types, huge ints, odd strings, missing
keys, nested junk up to 5,000 levels, extra results and annotations) and returns each task as JSON text,
so that what no Python object can hold (nesting past the recursion limit, a 5,000-digit number) is
included. `run_malformed(texts)` writes them as export files and reads them back through the same path as
`lora-pipeline ingest --export-file` (read_export_file -> canonical_task -> normalize_tasks), and
counts where every task ended: accepted, quarantined, unusable, a clean error (a `ValueError` naming the
file: the file is refused), a traceback (any other exception), or silently dropped (not accounted for).
A batch refused by a clean error is split until the offending tasks are alone, so one task nested
5,000 deep costs only itself. bench/reliability_report.py imports both.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import secrets
import tempfile
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import LabelStudioConfig
from pipeline.ingest.client import annotation_result
from pipeline.ingest.export_file import pull_export_file
from pipeline.ingest.records import NormalizedTasks

CATEGORIES = ("billing", "shipping")
CFG = LabelStudioConfig(categories=CATEGORIES)
COUNT_KEYS = ("tasks", "accepted", "quarantined", "unusable", "clean_errors", "tracebacks", "silently_dropped")


@dataclass(frozen=True)
class Raw:
    """JSON text put in place as is: nesting or numbers that Python objects (or json.dumps) cannot hold."""

    text: str


MISSING = object()  # a mutation that deletes the key


def nested(depth: int, kind: str = "list") -> Raw:
    """A value nested `depth` levels deep, as JSON text."""
    if kind == "list":
        return Raw("[" * depth + "]" * depth)
    return Raw('{"a":' * depth + "1" + "}" * depth)


# Values a field is replaced with: each is wrong for some field (and right for a few, which must still be read right).
JUNK: tuple[Any, ...] = (
    # booleans as other types: "false" and "0" are truthy in Python
    "false", "true", "0", "1", "", "no", 0, 1, None, True, False,
    # ids and numbers out of range or of the wrong type
    2**63 - 1, 2**63, 2**64, 2**64 + 1, 10**30, -1, -(2**63), -(2**63) - 1, 1.5, 1e308, float("inf"),
    Raw("1" + "0" * 5000), Raw("-0"), Raw("1e400"),
    # timestamps at the calendar's edge, with offsets, unparsable or out of range
    "9999-12-31T23:59:59-01:00", "9999-12-31T23:59:59.999999+14:00", "0001-01-01T00:00:00+01:00",
    "0001-01-01T00:00:00-23:59", "2024-13-45T00:00:00Z", "2024-05-01T10:00:00+25:00", "1969-12-31T23:59:59Z",
    "2262-04-12T00:00:00Z", "2024-05-01", "20240501T100000Z", "not a time",
    # odd strings
    " ", "\x00", "\ud800 lone surrogate", "x" * 100_001, "\u202eevil", "<script>alert(1)</script>", "null",
    "\t padded \n", "Ωμέγα ✓",
    # containers and nested junk
    [], {}, [None], ["a", "b"], [1, [2, [3]]], {"a": {"b": {"c": []}}}, {"email": 5}, {"id": 2**64},
    nested(50), nested(900), nested(1010), nested(1100, "dict"), nested(5000),
)  # fmt: skip

# Where a mutation lands in a valid task (see valid_task): task, annotation, result item and value fields.
PATHS: tuple[tuple[Any, ...], ...] = (
    ("id",),
    ("project",),
    ("data",),
    ("data", "prompt"),
    ("data", "system"),
    ("data", "context"),
    ("annotations",),
    ("annotations", 0),
    ("annotations", 0, "id"),
    ("annotations", 0, "was_cancelled"),
    ("annotations", 0, "ground_truth"),
    ("annotations", 0, "completed_by"),
    ("annotations", 0, "created_at"),
    ("annotations", 0, "updated_at"),
    ("annotations", 0, "result"),
    ("annotations", 0, "result", 0),
    ("annotations", 0, "result", 0, "from_name"),
    ("annotations", 0, "result", 0, "value"),
    ("annotations", 0, "result", 0, "value", "text"),
    ("annotations", 0, "result", 0, "value", "text", 0),
    ("annotations", 0, "result", 1, "value", "choices"),
    ("annotations", 0, "result", 1, "value", "choices", 0),
    ("annotations", 1, "ground_truth"),
    ("annotations", 1, "was_cancelled"),
    ("annotations", 1, "updated_at"),
    ("drafts",),
)
EXTRAS = ("second_response", "second_category", "extra_annotation", "duplicate_annotation", "drop_annotations")


def valid_task(i: int, *, annotations: int = 2) -> dict[str, Any]:
    """A well-formed exported task with `annotations` submitted annotations (ids from 10*i)."""
    anns = [
        {
            "id": 10 * i + k,
            "completed_by": 1 + k,
            "result": annotation_result(f"Answer {i}.{k}.", CATEGORIES[(i + k) % 2]),
            "was_cancelled": False,
            "ground_truth": False,
            "created_at": f"2026-01-01T00:00:0{k}.000001Z",
            "updated_at": f"2026-01-01T00:00:0{k}.000001Z",
        }
        for k in range(annotations)
    ]
    data = {"prompt": f"Question {i}?", "system": "You are the helpdesk.", "context": "Order 12."}
    return {"id": i, "data": data, "annotations": anns, "drafts": [], "predictions": [], "project": 7}


def _holds(node: Any, key: Any) -> bool:
    if isinstance(node, dict):
        return isinstance(key, str)
    return isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node)


def set_path(task: dict[str, Any], path: Sequence[Any], value: Any) -> None:
    """Put `value` at `path` (or delete the key when it is MISSING); a path that no longer exists is skipped."""
    node: Any = task
    for key in path[:-1]:
        if not _holds(node, key) or (isinstance(node, dict) and key not in node):
            return
        node = node[key]
    last = path[-1]
    if not _holds(node, last):
        return
    if value is MISSING:
        if isinstance(node, dict):
            node.pop(last, None)
        else:
            del node[last]
    else:
        node[last] = copy.deepcopy(value)  # JUNK's lists and dicts are shared: later mutations must not reach them


def add_extra(task: dict[str, Any], extra: str) -> None:
    """Structural mutations: a second response or category result, another or a copied annotation, none."""
    anns = task.get("annotations")
    if extra == "drop_annotations":
        task["annotations"] = []
        return
    if not isinstance(anns, list) or not anns or not isinstance(anns[0], dict):
        return
    first = anns[0]
    if extra in ("second_response", "second_category") and isinstance(first.get("result"), list):
        item = annotation_result("Another answer.", "shipping")[0 if extra == "second_response" else 1]
        first["result"].append(item)
    elif extra == "extra_annotation":
        anns.append({**copy.deepcopy(first), "id": 999_999, "updated_at": "2026-02-01T00:00:00Z"})
    elif extra == "duplicate_annotation":
        anns.append(copy.deepcopy(first))


def to_json(task: Any) -> str:
    """JSON text of a task whose values may include `Raw` pieces (put in place unescaped)."""
    token = secrets.token_hex(8)
    raws: dict[str, str] = {}

    def swap(value: Any) -> Any:
        if isinstance(value, Raw):
            key = f"@@raw-{token}-{len(raws)}@@"
            raws[key] = value.text
            return key
        if isinstance(value, dict):
            return {k: swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        return value

    text = json.dumps(swap(task), allow_nan=True)  # NaN/Infinity: not JSON, but Python writes them
    for key, raw in raws.items():
        text = text.replace(json.dumps(key), raw)
    return text


def mutated_task(i: int, rng: random.Random) -> str:
    """Task `i` with one to three mutations, as JSON text."""
    task = valid_task(i, annotations=rng.choice((1, 2, 2, 3)))
    for _ in range(rng.choice((1, 1, 2, 3))):
        if rng.random() < 0.15:
            add_extra(task, rng.choice(EXTRAS))
        else:
            value = MISSING if rng.random() < 0.1 else rng.choice(JUNK)
            set_path(task, rng.choice(PATHS), value)
    return to_json(task)


def malformed_tasks(n: int, seed: int = 0) -> list[str]:
    """`n` malformed tasks (JSON texts), the same for the same seed; ids 1..n unless a mutation changed them."""
    rng = random.Random(seed)
    return [mutated_task(i, rng) for i in range(1, n + 1)]


def parse_batch(texts: Sequence[str], path: Path) -> NormalizedTasks:
    """Write the tasks as one export file and read it back through the export-file pull; exceptions propagate."""
    path.write_text("[" + ",".join(texts) + "]", encoding="utf-8", errors="surrogatepass")
    return pull_export_file(path, CFG).normalized


def is_clean_error(error: BaseException, path: Path) -> bool:
    """The project's clean error for a refused export file: a `ValueError` that names the file."""
    return type(error) is ValueError and str(path) in str(error)


def _run(texts: Sequence[str], path: Path, counts: dict[str, int], failures: list[str] | None) -> None:
    try:
        normalized = parse_batch(texts, path)
    except Exception as e:  # classified below: a clean refusal, or a traceback the probe reports
        if len(texts) > 1:  # split until the offending tasks are alone
            half = len(texts) // 2
            _run(texts[:half], path, counts, failures)
            _run(texts[half:], path, counts, failures)
        elif is_clean_error(e, path):
            counts["clean_errors"] += 1
        else:
            counts["tracebacks"] += 1
            if failures is not None:
                failures.append(f"{texts[0][:300]}\n{''.join(traceback.format_exception(e))}")
        return
    accepted, quarantined, unusable = (len(normalized.records), len(normalized.quarantined), len(normalized.unusable))
    counts["accepted"] += accepted
    counts["quarantined"] += quarantined
    counts["unusable"] += unusable
    # Tasks in that are in no bucket (or, were that ever so, counted twice).
    counts["silently_dropped"] += abs(len(texts) - (accepted + quarantined + unusable))


def run_malformed(
    texts: Sequence[str], *, batch_size: int = 250, workdir: str | Path | None = None, failures: list[str] | None = None
) -> dict[str, int]:
    """Counts of where the tasks ended (COUNT_KEYS); tracebacks are appended to `failures` when given."""
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["tasks"] = len(texts)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "export.json"
        for start in range(0, len(texts), batch_size):
            _run(texts[start : start + batch_size], path, counts, failures)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    failures: list[str] = []
    print(json.dumps(run_malformed(malformed_tasks(args.n, args.seed), failures=failures), indent=2))
    for failure in failures[:5]:
        print(failure)


if __name__ == "__main__":
    main()
