"""`lora-pipeline export-dataset`: a snapshot's accepted pairs in the formats other tools read.

- `hf`: the DatasetDict (`datasets.load_from_disk(OUT)`), with the dataset card.
- `chat-jsonl`: `{"messages": [...]}` per line, as TRL's SFTTrainer and axolotl's `chat_template` read it;
  the messages are exactly the ones training renders with the chat template (system, context above the
  prompt, then the assistant's response).
- `sharegpt`: `{"conversations": [{"from": "system|human|gpt", "value": ...}]}` (LLaMA-Factory, axolotl).
- `alpaca`: `{"instruction", "input", "output", "system"}` (LLaMA-Factory, Stanford Alpaca).

The jsonl formats write `train.jsonl` and `eval.jsonl` (the frozen split) plus the card. `--push-to-hub`
uploads the DatasetDict with `DatasetDict.push_to_hub` and the token in `HF_TOKEN`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

from pipeline.chat_format import pair_messages
from pipeline.validate.hf_dataset import CARD, SPLITS, load_hf_dataset

ExportFormat = Literal["hf", "chat-jsonl", "sharegpt", "alpaca"]
FORMATS: tuple[ExportFormat, ...] = ("hf", "chat-jsonl", "sharegpt", "alpaca")


def chat_row(row: dict[str, Any]) -> dict[str, Any]:
    """One pair as `{"messages": [...]}`, the conversation training renders."""
    messages = pair_messages(SimpleNamespace(**row))
    return {"messages": [*messages, {"role": "assistant", "content": row["response"]}]}


def sharegpt_row(row: dict[str, Any]) -> dict[str, Any]:
    roles = {"system": "system", "user": "human", "assistant": "gpt"}
    return {"conversations": [{"from": roles[m["role"]], "value": m["content"]} for m in chat_row(row)["messages"]]}


def alpaca_row(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "instruction": row["prompt"],
        "input": row.get("context") or "",
        "output": row["response"],
        "system": row.get("system") or "",
    }


_ROW_FORMATS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "chat-jsonl": chat_row,
    "sharegpt": sharegpt_row,
    "alpaca": alpaca_row,
}


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    names = ds.features["category"].names
    for row in ds:
        category = row["category"]
        yield {**row, "category": names[category] if category >= 0 else None}


def export_dataset(snapshot_dir: str | Path, fmt: str, out: str | Path, *, push_to_hub: str | None = None) -> Path:
    """Write the snapshot's train/eval pairs to `out` in `fmt`; returns `out`. Refuses to overwrite files."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    ds = load_hf_dataset(snapshot_dir)
    out_path = Path(out)
    if out_path.exists() and any(out_path.iterdir()):
        raise ValueError(f"{out_path} exists and is not empty; choose a new directory")
    if fmt == "hf":
        ds.save_to_disk(str(out_path))
    else:
        out_path.mkdir(parents=True, exist_ok=True)
        convert = _ROW_FORMATS[fmt]
        for split in SPLITS:
            with (out_path / f"{split}.jsonl").open("w", encoding="utf-8") as f:
                for row in _rows(ds[split]):
                    f.write(json.dumps(convert(row), ensure_ascii=False) + "\n")
    shutil.copyfile(Path(snapshot_dir) / "hf" / CARD, out_path / CARD)
    if push_to_hub:
        token = os.environ.get("HF_TOKEN")
        if not token:
            raise ValueError("--push-to-hub needs a Hugging Face token in $HF_TOKEN (write access to the repo)")
        ds.push_to_hub(push_to_hub, token=token, private=True)
    return out_path
