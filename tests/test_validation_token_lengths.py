"""Token-length checks: bound-settled verdicts equal the verdicts of exact counting through `encode_pair`.

Two tokenizer families are covered: the project's tiny byte-level BPE model, and a SentencePiece-style
Unigram/Metaspace tokenizer (one prefix marker per segment) built here offline with its own chat template.
Tokenizers the bounds do not know (a normalizer, a template that transforms content) count every row.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.chat_format import IGNORE_INDEX, encode_pair, load_tokenizer
from pipeline.demo.sample_data import sample_corpus
from pipeline.ingest.records import records_frame
from pipeline.validate.token_bounds import derive_bounds, row_bounds
from pipeline.validate.token_lengths import (
    TokenCounter,
    TokenLimits,
    bounded_counter,
    chat_token_counter,
    exact_counts,
    renderable_rows,
)

WORDS = ["the", "ferry", "leaves", "pier", "at", "09:30", "Sailing", "ticket", "refund", "Kestrel", "?", ".", ","]
EDGE = [
    " ",
    "\n",
    "\t",
    "é",
    "e\u0301",
    "ß",
    "İ",
    "😀",
    "👩‍👩‍👧",
    "字",
    "مرحبا",
    "\u00a0",
    "<s>",
    "</s>",
    "<|end|>",
    "{name}",
]
WORDY = st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join)
ODD = st.lists(st.sampled_from(EDGE + WORDS), max_size=12).map("".join)
TEXT = st.one_of(WORDY, ODD, st.text(st.characters(exclude_categories=("Cs",)), max_size=30))
METASPACE_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    base = {"project_id": 1, "category": None, "annotator": "1", "updated_at": "2024-05-01T10:00:00Z"}
    return records_frame(
        [{**base, "annotation_id": i, "ground_truth": False, **r, "task_id": i + 1} for i, r in enumerate(rows)]
    )


@st.composite
def pair_rows(draw: Any) -> pd.DataFrame:
    n = draw(st.integers(min_value=1, max_value=8))
    maybe = st.one_of(st.none(), st.just(""), TEXT)
    return frame(
        [
            {"prompt": draw(TEXT), "response": draw(TEXT), "system": draw(maybe), "context": draw(maybe)}
            for _ in range(n)
        ]
    )


def reference(tokenizer: Any, records: pd.DataFrame) -> tuple[list[int], list[int]]:
    """Counts through the training code path, one row at a time."""
    examples = [encode_pair(tokenizer, r) for r in records.itertuples(index=False)]
    return (
        [len(e.input_ids) for e in examples],
        [sum(1 for label in e.labels if label != IGNORE_INDEX) for e in examples],
    )


def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer: Unigram model, Metaspace pre-tokenizer ('▁' prefix), special role tokens."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace()
    specials = ["<unk>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]
    tok.train_from_iterator(
        sample_corpus(), trainers.UnigramTrainer(vocab_size=400, special_tokens=specials, unk_token="<unk>")
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|end|>")
    hf.chat_template = METASPACE_TEMPLATE
    return hf


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Any:
    return load_tokenizer(str(tiny_model_dir))


@pytest.fixture(scope="module")
def metaspace() -> PreTrainedTokenizerFast:
    return metaspace_tokenizer()


def assert_same_verdicts(
    tokenizer: Any, records: pd.DataFrame, limits: TokenLimits, counter: TokenCounter | None = None
) -> int:
    """Bound-based counting gives the exact verdict on every row; returns how many rows it tokenized."""
    total, response = reference(tokenizer, records)
    counted = (counter or chat_token_counter(tokenizer))(records, limits)
    for i, (t, r) in enumerate(zip(total, response, strict=True)):
        exact_ok = t <= limits.max_length and r >= limits.min_response_tokens
        ct, cr = counted.total.iloc[i], counted.response.iloc[i]
        if pd.isna(ct):
            assert exact_ok, f"row {i}: settled by bounds but {t} tokens / {r} response tokens fail {limits}"
        else:
            assert (ct, cr) == (t, r), f"row {i}: counted {(ct, cr)}, encode_pair {(t, r)}"
    return int(counted.total.notna().sum())


def test_tiny_tokenizer_has_bounds(tiny: Any) -> None:
    bounds, why = derive_bounds(tiny)
    assert bounds is not None, why
    assert (bounds.family, bounds.per_segment) == ("byte_level", 0)


def test_metaspace_tokenizer_has_bounds_with_a_marker_per_segment(metaspace: PreTrainedTokenizerFast) -> None:
    bounds, why = derive_bounds(metaspace)
    assert bounds is not None, why
    assert (bounds.family, bounds.per_segment) == ("metaspace", 1)


@pytest.mark.parametrize("family", ["tiny", "metaspace"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(records=pair_rows(), pick=st.integers(0, 7), offset=st.integers(-1, 60), min_response=st.integers(0, 4))
def test_batched_counts_equal_encode_pair(
    family: str, request: pytest.FixtureRequest, records: pd.DataFrame, pick: int, offset: int, min_response: int
) -> None:
    """Without limits every row is counted, in batches, exactly as encode_pair counts it (unicode, system, context)."""
    tokenizer = request.getfixturevalue(family)
    counter = chat_token_counter(tokenizer)
    total, response = reference(tokenizer, records)
    counted = counter(records)
    assert counted.total.tolist() == total
    assert counted.response.tolist() == response
    bounds, _ = derive_bounds(tokenizer)
    assert bounds is not None
    rb = row_bounds(bounds, records, renderable_rows(records))
    claimed = ~rb.unbounded  # rows with an added token inside, under a per-segment marker, are always counted
    assert (rb.total_ub[claimed] >= pd.Series(total)[claimed]).all()
    assert (rb.response_lb[claimed] <= pd.Series(response)[claimed]).all()
    # Limits at a row's exact count ±1, and at its byte length plus an offset (where the upper bound sits).
    row = records.iloc[pick % len(records)]
    nbytes = len(row["prompt"].encode()) + len(row["response"].encode())
    t = total[pick % len(records)]
    for max_length in (t - 1, t, t + 1, nbytes + offset):
        assert_same_verdicts(tokenizer, records, TokenLimits(max(max_length, 0), min_response), counter)


@pytest.mark.parametrize("family", ["tiny", "metaspace"])
def test_short_rows_are_settled_without_tokenizing(family: str, request: pytest.FixtureRequest) -> None:
    """Rows far below the limit are decided by the bounds; only the seeded sample and the near ones are counted."""
    tokenizer = request.getfixturevalue(family)
    short = [{"prompt": f"Which pier for sailing {i}?", "response": "Pier two, at 09:30."} for i in range(600)]
    long = [{"prompt": "Tell me everything.", "response": " ".join(["The ferry leaves from pier two."] * 12)}]
    records = frame(short + long)
    limits = TokenLimits(max_length=96, min_response_tokens=1)
    counted = assert_same_verdicts(tokenizer, records, limits)
    assert counted == 6 + 1  # the 1% sample of the settled rows, and the long row
    counts = chat_token_counter(tokenizer)(records, limits)
    assert counts.total.iloc[-1] > 96  # the failing row carries its exact count, for the report


def test_rows_at_the_limit(tiny: Any) -> None:
    """A row exactly at max_length passes, one token over fails, whichever way it is decided."""
    records = frame(
        [{"prompt": f"Which pier for sailing {i}?", "response": "Pier " * i + "two."} for i in range(1, 40)]
    )
    total, _ = reference(tiny, records)
    counter = chat_token_counter(tiny)
    for t in sorted(set(total)):
        for max_length in (t - 1, t, t + 1):
            assert_same_verdicts(tiny, records, TokenLimits(max_length, 1), counter)


def test_a_wrong_bound_is_caught_and_every_row_counted(tiny: Any) -> None:
    """A bound that an exact count contradicts (here: template overhead 0) is dropped for the call."""
    bounds, _ = derive_bounds(tiny)
    assert bounds is not None
    wrong = dataclasses.replace(
        bounds, layouts={k: dataclasses.replace(v, tokens_ub=-1000) for k, v in bounds.layouts.items()}, eos=0
    )
    records = frame([{"prompt": f"Sailing {i}?", "response": "Pier two."} for i in range(50)])
    counted = bounded_counter(tiny, wrong)(records, TokenLimits(max_length=5, min_response_tokens=1))
    total, response = reference(tiny, records)
    assert counted.total.tolist() == total  # every row counted after the sample contradicted the bound
    assert counted.response.tolist() == response


def test_unknown_tokenizer_family_counts_every_row() -> None:
    """A normalizer may lengthen text (NFKC: 'ﷺ' becomes 18 characters): no byte bound, every row counted."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(
        sample_corpus(), trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"])
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[SEP]")
    assert derive_bounds(hf)[0] is None
    records = frame([{"prompt": "ﷺ ﷺ ﷺ", "response": "ﷺ"}, {"prompt": "Sailing 4?", "response": "Pier two."}])
    assert assert_same_verdicts(hf, records, TokenLimits(max_length=10_000, min_response_tokens=1)) == 2


def test_template_that_transforms_content_counts_every_row(tiny: Any) -> None:
    """`| replace` changes content length: the template's text cannot be measured once, so every row is counted.
    (`| trim` is guarded per row instead: tests/test_token_bounds_templates.py.)"""
    tokenizer = load_tokenizer(tiny.name_or_path)
    tokenizer.chat_template = tokenizer.chat_template.replace("m['content']", "m['content'] | replace('i', 'ii')")
    bounds, why = derive_bounds(tokenizer)
    assert bounds is None and "content" in why
    records = frame([{"prompt": "Sailing 4?", "response": "Pier two."}] * 3)
    assert assert_same_verdicts(tokenizer, records, TokenLimits(max_length=10_000, min_response_tokens=1)) == 3


def test_unrenderable_rows_are_not_counted(tiny: Any) -> None:
    """A row whose prompt is not text is left to the contract checks (NA), not counted or crashed on."""
    records = frame([{"prompt": "Sailing 4?", "response": "Pier two."}, {"prompt": None, "response": "Pier."}])
    counts = chat_token_counter(tiny)(records, TokenLimits(10, 1))
    assert counts.total.isna().tolist() == [False, True]
    assert exact_counts(tiny, records, records.index[:1].to_numpy())[0].tolist() == reference(tiny, records[:1])[0]
