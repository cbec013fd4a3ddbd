"""Token lengths as training counts them (`encode_pair`), tokenized only where a length verdict needs it.

Counting a million rows through the chat template takes minutes, but most rows are nowhere near a limit.
The bounds of `pipeline.validate.token_bounds` settle those: a row whose upper bound on all tokens is within
`max_length` and whose lower bound on response tokens reaches `min_response_tokens` passes both checks
whatever its exact count. Every other row is rendered with `render()` and tokenized in batches with the
same tokenizer call `encode_pair` makes. A seeded 1% sample of the settled rows is counted too, and a
counted row that contradicts its bounds (or the template layout they rest on) makes the call count every
row exactly: a wrong bound costs time, never a wrong verdict.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np
import pandas as pd

from pipeline.chat_format import encode_texts, render
from pipeline.validate.token_bounds import LengthBounds, RowBounds, derive_bounds, is_text, row_bounds

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

SAMPLE_ROWS = 256  # bound-settled rows counted anyway (1% of them, at most this many), to catch a wrong bound
BATCH_ROWS = 4096  # rows per tokenizer call on the exact path (bounds memory for offsets)


@dataclass(frozen=True)
class TokenLimits:
    """The two length rules: at most `max_length` tokens in all, at least `min_response_tokens` after the prompt."""

    max_length: int
    min_response_tokens: int


class TokenCounts(NamedTuple):
    """Per row (Int64): tokens in all and tokens learned from, exactly as `encode_pair` counts them.

    NA where a row cannot be rendered (prompt or response not text) and, when limits were given, where
    the bounds prove the row within both limits without counting it.
    """

    total: pd.Series
    response: pd.Series


class TokenCounter(Protocol):
    """Counts tokens per row; with `limits`, rows the bounds settle may be left uncounted (NA)."""

    def __call__(self, records: pd.DataFrame, limits: TokenLimits | None = None) -> TokenCounts: ...


def _chunks(idx: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(idx), size):
        yield idx[start : start + size]


def exact_counts(
    tokenizer: PreTrainedTokenizerBase, records: pd.DataFrame, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(total, response, rendered full chars, rendered prompt chars) for the given row positions.

    Same rendering and tokenizer call as `encode_pair`, batched: tokens starting inside the prompt text are
    not response tokens, and EOS is appended (to both counts) when the text does not end with it.
    """
    total, response = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
    full_chars, prompt_chars = np.zeros(len(rows), dtype=np.int64), np.zeros(len(rows), dtype=np.int64)
    eos = tokenizer.eos_token_id
    at = 0
    for chunk in _chunks(rows, BATCH_ROWS):
        rendered = [render(tokenizer, row) for row in records.iloc[chunk].itertuples(index=False)]
        encoded = encode_texts(tokenizer, [full for _, full in rendered])
        for j, ((prompt_text, full_text), (ids, offsets)) in enumerate(zip(rendered, encoded, strict=True)):
            cut = len(prompt_text)
            appended = int(eos is not None and (not ids or ids[-1] != eos))
            total[at + j] = len(ids) + appended
            response[at + j] = sum(1 for start, _ in offsets if start >= cut) + appended
            full_chars[at + j], prompt_chars[at + j] = len(full_text), cut
        at += len(chunk)
    return total, response, full_chars, prompt_chars


def renderable_rows(records: pd.DataFrame) -> np.ndarray:
    """Rows `encode_pair` can render: prompt and response are text (the contract checks report the others)."""
    n = len(records)
    return is_text(records.get("prompt"), n) & is_text(records.get("response"), n)


def chat_token_counter(tokenizer: PreTrainedTokenizerBase) -> TokenCounter:
    """Count tokens as training does (`encode_pair`); with limits, only rows the bounds cannot settle are counted."""
    bounds, why = derive_bounds(tokenizer)
    log.info("token-length bounds: %s", why if bounds is not None else f"off ({why}); every row is counted")
    return bounded_counter(tokenizer, bounds)


def bounded_counter(tokenizer: PreTrainedTokenizerBase, bounds: LengthBounds | None) -> TokenCounter:
    """The counter for given bounds (None: count every row); a bound that a counted row contradicts is dropped
    for the whole call and every row is counted, so a wrong bound costs time, never a wrong verdict."""

    def count(records: pd.DataFrame, limits: TokenLimits | None = None) -> TokenCounts:
        n = len(records)
        renderable = renderable_rows(records)
        todo = renderable.copy()
        rb = None
        if limits is not None and bounds is not None and n:
            rb = row_bounds(bounds, records, renderable)
            settled = (rb.total_ub <= limits.max_length) & (rb.response_lb >= limits.min_response_tokens)
            settled &= renderable & ~rb.unbounded
            todo = renderable & ~settled
            decided = np.flatnonzero(settled)
            rng = np.random.default_rng(n)
            sample = min(SAMPLE_ROWS, -(-len(decided) // 100))
            todo[rng.choice(decided, size=sample, replace=False)] = True
        rows = np.flatnonzero(todo)
        total, response, full_chars, prompt_chars = exact_counts(tokenizer, records, rows)
        if (
            bounds is not None
            and rb is not None
            and not _bounds_hold(rb, rows, total, response, full_chars, prompt_chars)
        ):
            log.warning("token-length bounds (%s) disagree with an exact count; counting every row", bounds.family)
            rows = np.flatnonzero(renderable)
            total, response, _, _ = exact_counts(tokenizer, records, rows)
        out_total = pd.Series(pd.NA, index=records.index, dtype="Int64")
        out_response = pd.Series(pd.NA, index=records.index, dtype="Int64")
        out_total.iloc[rows], out_response.iloc[rows] = total, response
        return TokenCounts(out_total, out_response)

    return count


def _bounds_hold(
    rb: RowBounds,
    rows: np.ndarray,
    total: np.ndarray,
    response: np.ndarray,
    full_chars: np.ndarray,
    prompt_chars: np.ndarray,
) -> bool:
    """Every counted row agrees with the bounds and with the template layout they were derived from."""
    ok = ~rb.unbounded[rows]  # rows the bounds do not speak for were counted without a claim
    return bool(
        np.all(rb.total_ub[rows][ok] >= total[ok])
        and np.all(rb.response_lb[rows][ok] <= response[ok])
        and np.array_equal(rb.full_chars[rows][ok], full_chars[ok])
        and np.array_equal(rb.prompt_chars[rows][ok], prompt_chars[ok])
    )


def rows_counted(counts: TokenCounts) -> int:
    """How many rows were tokenized (the rest were settled by the bounds or cannot be rendered)."""
    return int(counts.total.notna().sum())
