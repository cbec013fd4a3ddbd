"""A snapshot as a Hugging Face `datasets.DatasetDict`: `train`/`eval` from the frozen split, typed features
(category as a `ClassLabel` of the project's choices) and a dataset card.

Written into every snapshot as `hf/` (`datasets.load_from_disk(SNAPSHOT/hf)` reads it back with no
project code) and exported for other tools by `pipeline.validate.dataset_export`. `datasets` is
imported on use only, so importing this room stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from datasets import DatasetDict, Features

HF_DIR = "hf"
CARD = "README.md"
SPLITS = ("train", "eval")
# What an exported row carries: the pair, who/what produced it, and where it came from.
TEXT_COLUMNS = ("prompt", "response", "system", "context")
ID_COLUMNS = ("task_id", "annotation_id")


def category_names(records: pd.DataFrame, categories: list[str] | tuple[str, ...] | None) -> list[str]:
    """The ClassLabel names: the project's choices in their order, then any other category a row carries
    (a row is never dropped or relabelled because the project's choices changed)."""
    names = list(categories or [])
    seen = set(names)
    extra = sorted({str(c) for c in records["category"].dropna()} - seen) if "category" in records else []
    return names + extra


def snapshot_features(names: list[str]) -> Features:
    """Typed columns: ids as int64 (annotation id nullable), texts as strings, category a ClassLabel (-1: none)."""
    from datasets import ClassLabel, Features, Value

    return Features(
        {
            "task_id": Value("int64"),
            "annotation_id": Value("int64"),
            **{c: Value("string") for c in TEXT_COLUMNS},
            "category": ClassLabel(names=names),
        }
    )


def to_dataset_dict(
    records: pd.DataFrame, is_eval: pd.Series | Any, categories: list[str] | tuple[str, ...] | None
) -> DatasetDict:
    """`train` and `eval` Datasets of the accepted rows (task-id order), split by the `is_eval` flags."""
    from datasets import Dataset, DatasetDict

    names = category_names(records, categories)
    index = {n: i for i, n in enumerate(names)}
    frame = pd.DataFrame(
        {
            "task_id": records["task_id"].astype("int64").to_numpy(),
            "annotation_id": [None if pd.isna(a) else int(a) for a in records["annotation_id"]],
            **{c: [_text(v) for v in records[c]] if c in records else [None] * len(records) for c in TEXT_COLUMNS},
            "category": [-1 if pd.isna(c) else index[str(c)] for c in records["category"]],
        }
    )
    flags = pd.Series(is_eval, index=records.index).to_numpy(dtype=bool)
    features = snapshot_features(names)
    parts = {}
    for name, mask in (("train", ~flags), ("eval", flags)):
        part = frame[mask].sort_values("task_id", kind="stable").reset_index(drop=True)
        parts[name] = Dataset.from_pandas(part, features=features, preserve_index=False)
    return DatasetDict(parts)


def _text(value: Any) -> str | None:
    return None if value is None or (isinstance(value, float) and pd.isna(value)) else str(value)


def dataset_card(ds: DatasetDict, meta: dict[str, Any]) -> str:
    """The dataset card (`README.md`): source, hash, counts, checks run, category shares; license left blank."""
    source = meta.get("source") or {}
    names = ds["train"].features["category"].names
    lines = [
        "---",
        "# license: set by the data owner before sharing (the pipeline cannot know it)",
        "pretty_name: " + _yaml_str(f"{meta.get('project_title') or 'lora-pipeline'} snapshot {meta['hash'][:12]}"),
        "task_categories:",
        "- text-generation",
        "---",
        "",
        f"# {meta.get('project_title') or 'Label Studio project'}: snapshot `{meta['hash'][:12]}`",
        "",
        "Prompt→response pairs annotated in Label Studio, validated and snapshotted by lora-pipeline.",
        "",
        "| field | value |",
        "| --- | --- |",
        f"| source | {source.get('mode', source.get('kind', 'unknown'))} pull of "
        f"{source.get('url') or source.get('path') or 'n/a'}, project {source.get('project_id', 'n/a')} |",
        f"| snapshot hash (rows + held-out ids) | `{meta['hash']}` |",
        f"| created | {meta.get('created_at', 'n/a')} |",
        f"| rows | train {ds['train'].num_rows}, eval {ds['eval'].num_rows} |",
        f"| checks run | {', '.join(meta.get('checks_run') or []) or 'n/a'} |",
        f"| annotation rule | {meta.get('annotation_rule', 'n/a')} |",
        "",
        "## Category shares",
        "",
        "| category | train | eval |",
        "| --- | --- | --- |",
    ]
    shares = {s: _shares(ds[s]["category"], names) for s in SPLITS}
    for label in [*names, "(none)"]:
        tr, ev = shares["train"].get(label, 0.0), shares["eval"].get(label, 0.0)
        if tr or ev or label != "(none)":
            lines.append(f"| {label} | {tr:.1%} | {ev:.1%} |")
    lines += [
        "",
        "## Load it",
        "",
        "```python",
        "from datasets import load_from_disk",
        'ds = load_from_disk("hf")  # DatasetDict with "train" and "eval"',
        "",
        "# or, from the snapshot's parquet file (all columns; `is_eval` marks the held-out rows):",
        "from datasets import load_dataset",
        'rows = load_dataset("parquet", data_files="snapshot.parquet", split="train")',
        'eval_rows = rows.filter(lambda r: r["is_eval"])',
        "```",
        "",
        "The split is frozen: rows held out for evaluation are never trained on by the pipeline.",
        "",
    ]
    return "\n".join(lines)


def _shares(labels: list[int], names: list[str]) -> dict[str, float]:
    if not labels:
        return {}
    counts = pd.Series([names[i] if i >= 0 else "(none)" for i in labels]).value_counts(normalize=True)
    return {str(k): float(v) for k, v in counts.items()}


def _yaml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_hf_dataset(out: Path, records: pd.DataFrame, is_eval: Any, meta: dict[str, Any]) -> DatasetDict:
    """Save the DatasetDict to `out` (Arrow, `load_from_disk`-able) with its dataset card."""
    ds = to_dataset_dict(records, is_eval, meta.get("categories"))
    ds.save_to_disk(str(out))
    (out / CARD).write_text(dataset_card(ds, meta))
    return ds


def load_hf_dataset(snapshot_dir: str | Path) -> DatasetDict:
    """The snapshot's DatasetDict (memory-mapped Arrow)."""
    from datasets import load_from_disk

    path = Path(snapshot_dir) / HF_DIR
    if not path.is_dir():
        raise FileNotFoundError(
            f"snapshot {snapshot_dir} has no {HF_DIR}/ dataset (written before snapshots carried one); pull again"
        )
    return load_from_disk(str(path))
