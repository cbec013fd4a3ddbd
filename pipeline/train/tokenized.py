"""Tokenize once: training examples through `datasets.Dataset.map`, cached as Arrow by what determines them.

The cache key is a sha256 of the rows' learned content, the tokenizer (vocabulary, special tokens,
class), the chat template and `max_length`; a rank sweep, a resumed run or a rerun on the same
snapshot reads the cached Arrow file instead of tokenizing again, and a changed tokenizer or
template misses it. The cache lives in `data.tokenize_cache_dir` (default
`$XDG_CACHE_HOME/lora-pipeline/tokenized`, else `~/.cache/lora-pipeline/tokenized`); files are
written to a temp name and renamed by `datasets`, so concurrent runs (DDP ranks, two sweeps) never
read a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, overload

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from pipeline.chat_format import IGNORE_INDEX, Example, chat_template, check_examples, encode_pair

# The columns `encode_pair` reads; the key hashes exactly these.
ENCODED_COLUMNS = ("task_id", "prompt", "response", "system", "context")
# Bump when encode_pair's output for the same inputs changes.
ENCODING_VERSION = 2


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "lora-pipeline" / "tokenized"


def tokenizer_hash(tokenizer: PreTrainedTokenizerBase) -> str:
    """What makes two tokenizers tokenize alike: vocabulary, special tokens, class and (fast) pipeline."""
    h = hashlib.sha256()
    h.update(type(tokenizer).__name__.encode())
    h.update(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode())
    h.update(json.dumps({k: str(v) for k, v in tokenizer.special_tokens_map.items()}, sort_keys=True).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    return h.hexdigest()


def rows_hash(records: pd.DataFrame) -> str:
    """Row-order-sensitive hash of the encoded columns (vectorized: fast at millions of rows)."""
    cols = [c for c in ENCODED_COLUMNS if c in records]
    frame = records[cols].astype(object).where(records[cols].notna(), "\x00null").astype(str)
    values = pd.util.hash_pandas_object(frame, index=False).to_numpy()
    return hashlib.sha256(values.tobytes() + json.dumps(cols).encode()).hexdigest()


def cache_key(tokenizer: PreTrainedTokenizerBase, records: pd.DataFrame, max_length: int) -> str:
    parts = [
        f"v{ENCODING_VERSION}",
        rows_hash(records),
        tokenizer_hash(tokenizer),
        hashlib.sha256(chat_template(tokenizer).encode()).hexdigest(),
        str(max_length),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _encode_batch(batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[Any]]:
    keys = list(batch)
    out: dict[str, list[Any]] = {"task_id": [], "input_ids": [], "labels": [], "length": [], "has_loss": []}
    for values in zip(*(batch[k] for k in keys), strict=True):
        ex = encode_pair(tokenizer, SimpleNamespace(**dict(zip(keys, values, strict=True))))
        out["task_id"].append(ex.task_id)
        out["input_ids"].append(ex.input_ids)
        out["labels"].append(ex.labels)
        out["length"].append(len(ex.input_ids))
        out["has_loss"].append(any(label != IGNORE_INDEX for label in ex.labels))
    return out


class ArrowExamples(Sequence[Example]):
    """Examples read on demand from the memory-mapped Arrow file: holding them costs no RAM per row."""

    def __init__(self, dataset: Any) -> None:
        self._ds = dataset.with_format(None)

    def __len__(self) -> int:
        return self._ds.num_rows

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        row = self._ds[i]
        return Example(task_id=int(row["task_id"]), input_ids=row["input_ids"], labels=row["labels"])

    def column(self, name: str) -> np.ndarray:
        return self._ds.data.column(name).to_numpy()


def check_cached(examples: ArrowExamples, max_length: int) -> ArrowExamples:
    """`check_examples` on the length and has-loss columns, without reading the token lists."""
    ids = examples.column("task_id")
    too_long = ids[examples.column("length") > max_length].tolist()
    no_loss = ids[~examples.column("has_loss")].tolist()
    if too_long or no_loss:  # the same errors, worded once, in chat_format
        bad = set(too_long) | set(no_loss)
        check_examples([e for e in examples if e.task_id in bad], max_length)
    return examples


def tokenize_cached(
    tokenizer: PreTrainedTokenizerBase,
    records: pd.DataFrame,
    max_length: int,
    *,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
) -> ArrowExamples:
    """`build_examples`, through a cached `Dataset.map`: same examples, same order, same checks, read lazily
    from the memory-mapped Arrow file."""
    from datasets import Dataset, disable_progress_bars, enable_progress_bars

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(tokenizer, records, max_length)
    cols = [c for c in ENCODED_COLUMNS if c in records]
    source = Dataset.from_pandas(records[cols].reset_index(drop=True), preserve_index=False)
    cache_file = root / f"{key}.arrow"
    hit = cache_file.is_file()
    if hit:
        disable_progress_bars()
    try:
        encoded = source.map(
            _encode_batch,
            batched=True,
            fn_kwargs={"tokenizer": tokenizer},
            remove_columns=cols,
            cache_file_name=str(cache_file),
            new_fingerprint=key[:32],  # datasets suffixes it per worker and caps it at 64 chars
            load_from_cache_file=True,
            num_proc=num_proc if num_proc and num_proc > 1 and len(records) >= 10_000 else None,
            desc="tokenizing",
        )
    finally:
        if hit:
            enable_progress_bars()
    return check_cached(ArrowExamples(encoded), max_length)
