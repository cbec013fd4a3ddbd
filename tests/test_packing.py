"""Padding-free packing: attention and positions stay inside each example, so no example's loss changes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from pipeline.chat_format import IGNORE_INDEX, build_examples, load_tokenizer
from pipeline.train.packing import collate_packed, make_batch, pack_rows
from pipeline.train.scoring import token_nll
from tests.conftest import make_records

CPU = torch.device("cpu")


def _examples(model_dir: Path, n: int) -> list:
    tok = load_tokenizer(str(model_dir))
    records = make_records(n)
    # Widely varied lengths, as real pairs are: some responses repeated several times.
    for i in range(0, n, 3):
        records.loc[i, "response"] = " ".join([records.loc[i, "response"]] * (1 + i % 4))
    return build_examples(tok, records, max_length=512), int(tok.pad_token_id)


def test_pack_rows_respects_capacity_and_keeps_every_example_once(tiny_model_dir: Path) -> None:
    """First-fit decreasing never overfills a row, and every example lands in exactly one row."""
    examples, _ = _examples(tiny_model_dir, 16)
    capacity = max(len(e.input_ids) for e in examples) + 10
    rows = pack_rows(examples, capacity)
    assert all(sum(len(e.input_ids) for e in row) <= capacity for row in rows)
    assert sorted(e.task_id for row in rows for e in row) == sorted(e.task_id for e in examples)
    assert len(rows) < len(examples)  # it actually packs
    with pytest.raises(ValueError, match="longer than the packing row"):
        pack_rows(examples, capacity=8)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packing_changes_no_per_example_loss(tiny_model_dir: Path, attn: str) -> None:
    """Each example's summed NLL in a packed row equals its NLL run alone (block-diagonal attention, reset positions)."""
    examples, pad_id = _examples(tiny_model_dir, 12)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation=attn).eval()
    capacity = 2 * max(len(e.input_ids) for e in examples)
    rows = pack_rows(examples, capacity)
    assert any(len(row) >= 3 for row in rows)
    batch = collate_packed(rows, pad_id, CPU)
    assert batch.attention_mask is None and batch.position_ids is not None
    with torch.no_grad():
        packed = token_nll(
            model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False).logits, batch.labels
        )  # (B, T-1)
        for r, row in enumerate(rows):
            at = 0
            for ex in row:
                n = len(ex.input_ids)
                alone = token_nll(model(input_ids=torch.tensor([ex.input_ids])).logits, torch.tensor([ex.labels]))
                # Position at+n-1 would predict the next example's first token: it must not be scored.
                if at + n < batch.labels.shape[1]:
                    assert batch.labels[r, at + n].item() == IGNORE_INDEX
                torch.testing.assert_close(packed[r, at : at + n - 1], alone[0], rtol=1e-4, atol=1e-5)
                at += n


def test_packed_and_padded_batches_give_the_same_loss_and_less_padding(tiny_model_dir: Path) -> None:
    """The packed micro-batch's total loss equals the padded one's, with a smaller padding fraction."""
    examples, pad_id = _examples(tiny_model_dir, 8)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)).eval()
    capacity = max(len(e.input_ids) for e in examples) * 2
    packed = make_batch(examples, packing=True, capacity=capacity, pad_id=pad_id, device=CPU)
    padded = make_batch(examples, packing=False, capacity=capacity, pad_id=pad_id, device=CPU)
    assert packed.real_tokens == padded.real_tokens == sum(len(e.input_ids) for e in examples)
    assert packed.padding_fraction < padded.padding_fraction
    with torch.no_grad():
        lp = token_nll(
            model(input_ids=packed.input_ids, position_ids=packed.position_ids, use_cache=False).logits, packed.labels
        ).sum()
        ld = token_nll(
            model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits, padded.labels
        ).sum()
    torch.testing.assert_close(lp, ld, rtol=1e-5, atol=1e-4)
