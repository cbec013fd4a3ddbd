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
from typing import TYPE_CHECKING, Any, overload

import pandas as pd
from transformers import PreTrainedTokenizerBase

from pipeline.chat_format import IGNORE_INDEX, Example, chat_template, check_examples, encode_pairs

if TYPE_CHECKING:
    from datasets import Dataset

# What training reads: a DataFrame of PairRecords, or a snapshot split as a (memory-mapped) `datasets.Dataset`.
TrainingRows = pd.DataFrame | Any

# The columns `encode_pairs` reads; the key hashes exactly these.
ENCODED_COLUMNS = ("task_id", "prompt", "response", "system", "context")
# Bump when encode_pairs' output for the same inputs changes.
ENCODING_VERSION = 2
# Rows per Arrow batch when hashing or checking: memory stays flat however many rows there are.
CHUNK_ROWS = 50_000


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


def source_dataset(rows: TrainingRows) -> Dataset:
    """The encoded columns as a `Dataset`: a snapshot split as it is (memory-mapped), a DataFrame converted."""
    from datasets import Dataset

    if isinstance(rows, pd.DataFrame):
        cols = [c for c in ENCODED_COLUMNS if c in rows]
        return Dataset.from_pandas(rows[cols].reset_index(drop=True), preserve_index=False)
    return rows.select_columns([c for c in ENCODED_COLUMNS if c in rows.column_names])


def rows_hash(source: Dataset) -> str:
    """Row-order-sensitive hash of the encoded columns, read one Arrow batch at a time (flat memory at any size);
    a DataFrame and the snapshot split holding the same rows hash alike."""
    cols = list(source.column_names)
    h = hashlib.sha256(json.dumps(cols).encode())
    for batch in source.data.to_batches(max_chunksize=CHUNK_ROWS):
        frame = batch.to_pandas().astype(object)
        frame = frame.where(frame.notna(), "\x00null").astype(str)
        h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()


def cache_key(tokenizer: PreTrainedTokenizerBase, rows: TrainingRows, max_length: int) -> str:
    """What determines the examples: the encoded columns, the tokenizer, the chat template and `max_length`."""
    return _key(tokenizer, source_dataset(rows), max_length)


def _key(tokenizer: PreTrainedTokenizerBase, source: Dataset, max_length: int) -> str:
    parts = [
        f"v{ENCODING_VERSION}",
        rows_hash(source),
        tokenizer_hash(tokenizer),
        hashlib.sha256(chat_template(tokenizer).encode()).hexdigest(),
        str(max_length),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _encode_batch(batch: dict[str, list[Any]], tokenizer: PreTrainedTokenizerBase) -> dict[str, list[Any]]:
    keys = list(batch)
    rows = [SimpleNamespace(**dict(zip(keys, values, strict=True))) for values in zip(*batch.values(), strict=True)]
    examples = encode_pairs(tokenizer, rows)
    return {
        "task_id": [ex.task_id for ex in examples],
        "input_ids": [ex.input_ids for ex in examples],
        "labels": [ex.labels for ex in examples],
        "length": [len(ex.input_ids) for ex in examples],
        "has_loss": [any(label != IGNORE_INDEX for label in ex.labels) for ex in examples],
    }


class RowSequence(Sequence[Example]):
    """Examples read one at a time by `_row(i)`, as a `Sequence`: slices and negative indices included."""

    def _row(self, i: int) -> Example:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...
    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        n = len(self)
        if isinstance(i, slice):
            return [self._row(j) for j in range(*i.indices(n))]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"example index {i} out of range for {n} examples")
        return self._row(i)


class ArrowExamples(RowSequence):
    """Examples read on demand from the memory-mapped Arrow file: holding them costs no RAM per row."""

    def __init__(self, dataset: Any) -> None:
        self._ds = dataset.with_format(None)

    def __len__(self) -> int:
        return self._ds.num_rows

    def _row(self, i: int) -> Example:
        row = self._ds[i]
        return Example(task_id=int(row["task_id"]), input_ids=row["input_ids"], labels=row["labels"])

    @property
    def table(self) -> Any:
        """The underlying (memory-mapped) Arrow table."""
        return self._ds.data


def check_cached(examples: ArrowExamples, max_length: int) -> ArrowExamples:
    """`check_examples` on the length and has-loss columns, one Arrow batch at a time, without reading the token
    lists."""
    table = examples.table.select(["task_id", "length", "has_loss"])
    bad: set[int] = set()
    for batch in table.to_batches(max_chunksize=CHUNK_ROWS):
        ids, length, has_loss = (batch.column(i).to_numpy(zero_copy_only=False) for i in range(3))
        bad.update(ids[(length > max_length) | ~has_loss].tolist())
    if bad:  # the same errors, worded once, in chat_format
        check_examples([e for e in examples if e.task_id in bad], max_length)
    return examples


def tokenize_cached(
    tokenizer: PreTrainedTokenizerBase,
    rows: TrainingRows,
    max_length: int,
    *,
    cache_dir: str | Path | None = None,
    num_proc: int | None = None,
) -> ArrowExamples:
    """`build_examples`, through a cached `Dataset.map`: same examples, same order, same checks, read lazily
    from the memory-mapped Arrow file. `rows` is a DataFrame or a snapshot split (`Snapshot.hf_split()`), which
    is never loaded into memory whole."""
    from datasets import disable_progress_bars, enable_progress_bars

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    source = source_dataset(rows)
    key = _key(tokenizer, source, max_length)
    cache_file = root / f"{key}.arrow"
    hit = cache_file.is_file()
    if hit:
        disable_progress_bars()
    try:
        encoded = source.map(
            _encode_batch,
            batched=True,
            fn_kwargs={"tokenizer": tokenizer},
            remove_columns=source.column_names,
            cache_file_name=str(cache_file),
            new_fingerprint=key[:32],  # datasets suffixes it per worker and caps it at 64 chars
            load_from_cache_file=True,
            num_proc=num_proc if num_proc and num_proc > 1 and source.num_rows >= 10_000 else None,
            desc="tokenizing",
        )
    finally:
        if hit:
            enable_progress_bars()
    return check_cached(ArrowExamples(encoded), max_length)
