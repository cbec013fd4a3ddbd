"""Snapshots as Hugging Face datasets: plain `datasets` reads them, exports parse as other tools read them,
tokenization is cached by what determines it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import pytest

from pipeline.chat_format import build_examples, encode_pair, load_tokenizer, render
from pipeline.ingest.records import records_frame
from pipeline.train import tokenized
from pipeline.train.tokenized import cache_key, tokenize_cached
from pipeline.validate.dataset_export import FORMATS, export_dataset
from pipeline.validate.snapshot import write_snapshot

CATEGORIES = ["schedules", "tickets", "lost_property"]


def _row(tid: int, category: str | None, **kw: Any) -> dict[str, Any]:
    return {
        "task_id": tid,
        "annotation_id": 5000 + tid,
        "project_id": 1,
        "prompt": f"When does ferry {tid} leave?",
        "response": f"Ferry {tid} leaves at {tid % 12 + 1} o'clock.",
        "category": category,
        "annotator": "3",
        "updated_at": "2026-11-01T10:00:00Z",
        "ground_truth": False,
        "system": None,
        "context": None,
        **kw,
    }


@pytest.fixture
def snapshot(tmp_path: Path) -> Any:
    rows = [_row(t, CATEGORIES[t % 3]) for t in range(1, 31)]
    rows.append(_row(31, None, system="Be brief.", context="Timetable: 9:00, 12:00"))
    rows.append(_row(32, "unlisted"))  # a category the project no longer lists: kept, not dropped
    records = records_frame(rows)
    return write_snapshot(
        records,
        records.iloc[:0],
        tmp_path / "snaps",
        meta={"categories": CATEGORIES, "project_title": "Ferry desk", "source": {"mode": "full", "project_id": 1}},
        eval_fraction=0.2,
    )


def test_plain_datasets_reads_the_snapshot(snapshot: Any) -> None:
    """No project code: `load_from_disk` gives train/eval equal to the snapshot's accepted rows and split."""
    code = (
        "import json, sys, datasets\n"
        "ds = datasets.load_from_disk(sys.argv[1])\n"
        "names = ds['train'].features['category'].names\n"
        "out = {s: [dict(r, category=names[r['category']] if r['category'] >= 0 else None) for r in ds[s]]"
        " for s in ds}\n"
        "print(json.dumps({'names': names, 'rows': out}))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(snapshot.path / "hf")], capture_output=True, text=True, check=True
    )
    got = json.loads(proc.stdout)
    assert got["names"] == [*CATEGORIES, "unlisted"]
    train, eval_ = snapshot.split()
    for name, frame in (("train", train), ("eval", eval_)):
        rows = got["rows"][name]
        assert [r["task_id"] for r in rows] == frame["task_id"].tolist()
        for r, expected in zip(rows, frame.itertuples(index=False), strict=True):
            assert r["prompt"] == expected.prompt and r["response"] == expected.response
            assert r["category"] == (None if pd.isna(expected.category) else expected.category)
            assert r["annotation_id"] == expected.annotation_id
    assert len(got["rows"]["eval"]) >= 1

    # The card's other recipe: `load_dataset("parquet")` on the snapshot file, held-out rows by `is_eval`.
    code = (
        "import json, sys, datasets\n"
        "rows = datasets.load_dataset('parquet', data_files=sys.argv[1], split='train')\n"
        "print(json.dumps(sorted(rows.filter(lambda r: r['is_eval'])['task_id'])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(snapshot.parquet_path)], capture_output=True, text=True, check=True
    )
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == sorted(eval_["task_id"].tolist())
    card = (snapshot.path / "hf" / "README.md").read_text()
    assert 'load_dataset("parquet", data_files="snapshot.parquet", split="train")' in card


def test_dataset_card(snapshot: Any) -> None:
    card = (snapshot.path / "hf" / "README.md").read_text()
    assert snapshot.hash in card
    assert "Ferry desk" in card and "| schedules |" in card and "(none)" in card
    assert "license" in card.split("---")[1]  # left for the data owner, named


def test_chat_jsonl_export_is_what_training_renders(snapshot: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    """chat-jsonl parses with `datasets.load_dataset("json")` (TRL's loader) and the tokenizer's chat template
    renders each conversation to exactly the text training tokenizes."""
    out = export_dataset(snapshot.path, "chat-jsonl", tmp_path / "chat")
    ds = datasets.load_dataset("json", data_files={"train": str(out / "train.jsonl"), "eval": str(out / "eval.jsonl")})
    train, eval_ = snapshot.split()
    assert ds["train"].num_rows == len(train) and ds["eval"].num_rows == len(eval_)
    tok = load_tokenizer(str(tiny_model_dir))
    for conv, row in zip(ds["train"]["messages"], train.itertuples(index=False), strict=True):
        _, full_text = render(tok, row)
        assert tok.apply_chat_template(conv, tokenize=False) == full_text
    with_system = [m for m in [*ds["train"]["messages"], *ds["eval"]["messages"]] if m[0]["role"] == "system"]
    assert with_system == [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Timetable: 9:00, 12:00\n\nWhen does ferry 31 leave?"},
            {"role": "assistant", "content": "Ferry 31 leaves at 8 o'clock."},
        ]
    ]


def test_every_format_through_the_cli(snapshot: Any, tmp_path: Path) -> None:
    for fmt in FORMATS:
        out = tmp_path / fmt
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", "export-dataset", str(snapshot.path), "--format", fmt, str(out)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr
        assert (out / "README.md").is_file()
    assert datasets.load_from_disk(str(tmp_path / "hf"))["train"].num_rows == len(snapshot.split()[0])
    share = [json.loads(line) for line in (tmp_path / "sharegpt" / "train.jsonl").read_text().splitlines()]
    assert {t["from"] for r in share for t in r["conversations"]} <= {"system", "human", "gpt"}
    alpaca = [json.loads(line) for line in (tmp_path / "alpaca" / "eval.jsonl").read_text().splitlines()]
    assert all(set(r) == {"instruction", "input", "output", "system"} for r in alpaca)
    # bad input: one line, exit 2, nothing overwritten
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "export-dataset",
            str(snapshot.path),
            "--format",
            "hf",
            str(tmp_path / "hf"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "not empty" in proc.stderr and "Traceback" not in proc.stderr


def test_tokenization_cache_hit_and_miss(
    snapshot: Any, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same examples as `build_examples`; the second run never calls the encoder; a changed tokenizer misses."""
    calls = {"n": 0}
    real = tokenized.encode_pairs

    def counting(tok: Any, rows: Any) -> Any:
        calls["n"] += len(rows)
        return real(tok, rows)

    monkeypatch.setattr(tokenized, "encode_pairs", counting)
    tok = load_tokenizer(str(tiny_model_dir))
    train, _ = snapshot.split()
    cache = tmp_path / "cache"
    first = tokenize_cached(tok, train, 256, cache_dir=cache)
    assert list(first) == build_examples(tok, train, 256) == [encode_pair(tok, r) for r in train.itertuples()]
    assert first[-1] == first[len(first) - 1] and first[1:3] == list(first)[1:3]
    assert calls["n"] == len(train)
    second = tokenize_cached(tok, train, 256, cache_dir=cache)
    assert list(second) == list(first)
    assert calls["n"] == len(train), "the cached Arrow file was not used"
    # The snapshot's memory-mapped split (what the flow and the CLI train from) holds the same rows: same key, a hit.
    hf_train, _ = snapshot.hf_split()
    assert cache_key(tok, hf_train, 256) == cache_key(tok, train, 256)
    assert list(tokenize_cached(tok, hf_train, 256, cache_dir=cache)) == list(first)
    assert calls["n"] == len(train), "the snapshot split missed the cache its rows filled"

    other = load_tokenizer(str(tiny_model_dir))
    other.add_tokens(["<ferry>"])  # another vocabulary
    tokenize_cached(other, train, 256, cache_dir=cache)
    assert calls["n"] == 2 * len(train), "a changed tokenizer must miss the cache"

    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}" + (
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    assert cache_key(tok, train, 256) != cache_key(load_tokenizer(str(tiny_model_dir)), train, 256)
    tokenize_cached(tok, train, 256, cache_dir=cache)
    assert calls["n"] == 3 * len(train), "a changed chat template must miss the cache"
    assert cache_key(tok, train, 128) != cache_key(tok, train, 256)
    assert cache_key(tok, train.iloc[:-1], 256) != cache_key(tok, train, 256)
    with pytest.raises(ValueError, match=r"exceed data.max_length=16 tokens \(task ids \["):
        tokenize_cached(tok, train, 16, cache_dir=cache)


def test_chat_jsonl_export_trains_in_trl(snapshot: Any, tmp_path: Path, tiny_model_dir: Path) -> None:
    """The chat-jsonl export as a TRL user takes it: `load_dataset("json")` into `SFTTrainer`, two optimizer steps
    on the tiny model; TRL renders each conversation to the tokens our training starts from."""
    import trl  # in the test extra
    from transformers import AutoModelForCausalLM

    out = export_dataset(snapshot.path, "chat-jsonl", tmp_path / "chat")
    train = datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "trl"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = trl.SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
    tokenized_by_trl = trainer.train_dataset["input_ids"]
    ours = [encode_pair(tok, r).input_ids for r in snapshot.split()[0].itertuples()]
    assert tokenized_by_trl == ours
    result = trainer.train()
    assert result.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(np.isfinite(losses))
