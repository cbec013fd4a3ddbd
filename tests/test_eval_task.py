"""Task evaluation: generation metrics, held-out loss for both sides, and the side-by-side rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from rouge_score import rouge_scorer
from transformers import AutoModelForCausalLM

from pipeline.chat_format import build_examples, load_tokenizer, render
from pipeline.config import load_config
from pipeline.evaluate.task_eval import evaluate_task, exact_match, greedy_generate, rouge_l
from pipeline.train.scoring import mean_token_loss, pad_batch, plain_head, sequence_nll, token_nll
from tests.conftest import make_records


@pytest.mark.parametrize(
    ("prediction", "reference"),
    [
        ("the cat sat on the mat", "the cat is on the mat"),
        ("boarding closes ten minutes before departure", "boarding closes 10 minutes before each departure"),
        ("a b c d", "d c b a"),
        ("nothing in common", "entirely different words"),
    ],
)
def test_rouge_l_equals_the_reference_implementation(prediction: str, reference: str) -> None:
    """Our LCS-based ROUGE-L F1 equals Google's rouge-score package on plain lower-case words."""
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(reference, prediction)["rougeL"].fmeasure
    assert rouge_l(prediction, reference) == pytest.approx(expected)


def test_exact_match_ignores_case_and_spacing_only() -> None:
    assert exact_match("The ferry leaves at  9.", "the ferry leaves at 9.")
    assert not exact_match("The ferry leaves at 9", "the ferry leaves at 9.")
    assert rouge_l("", "") == 1.0 and rouge_l("x", "") == 0.0


@pytest.mark.slow
def test_task_evaluation_scores_both_sides_of_one_model(tiny_model_dir: Path) -> None:
    """Held-out loss of the base side equals the plain base's; generations are greedy, per side, and tabled."""
    tok = load_tokenizer(str(tiny_model_dir))
    records = make_records(12)
    cfg = load_config(base_model=str(tiny_model_dir), eval={"generation_samples": 3, "max_new_tokens": 12})
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)),
        # Random (non-zero) LoRA weights: the adapter side must differ from the base side.
        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    result = evaluate_task(model, tok, records, cfg)

    examples = build_examples(tok, records, cfg.data.max_length)
    plain = sequence_nll(
        base, [(e.input_ids, e.labels) for e in examples], pad_id=tok.pad_token_id, batch_size=4, device=base.device
    )
    assert result.base_loss == pytest.approx(mean_token_loss(plain), rel=1e-5)
    assert result.adapter_loss != pytest.approx(result.base_loss)
    imp = result.improvement
    assert imp.low <= imp.estimate <= imp.high and imp.estimate == pytest.approx(result.base_loss - result.adapter_loss)

    rows = result.side_by_side
    assert len(rows) == 3
    assert set(rows[0]) >= {"prompt", "reference", "base_output", "adapter_output", "base_rouge_l", "adapter_rouge_l"}
    by_id = {int(r.task_id): r for r in records.itertuples(index=False)}
    first = by_id[rows[0]["task_id"]]
    assert rows[0]["reference"] == first.response and rows[0]["prompt"] == first.prompt
    assert rows[0]["base_output"] == greedy_generate(base, tok, [render(tok, first)[0]], 12)[0]
    m = result.metrics()
    assert m["task_rouge_l_base"] == pytest.approx(sum(r["base_rouge_l"] for r in rows) / 3)
    assert m["task_generated_examples"] == 3


@pytest.mark.parametrize("with_adapter", [False, True])
def test_sequence_nll_scores_only_labelled_positions_in_chunks(tiny_model_dir: Path, with_adapter: bool) -> None:
    """Chunked scoring at labelled positions equals the sums over full (B, T, V) logits, per sequence."""
    tok = load_tokenizer(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    if with_adapter:
        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
        )
    causal = model.get_base_model() if with_adapter else model
    assert plain_head(causal) and causal.base_model is not causal  # the chunked path is the one under test
    examples = build_examples(tok, make_records(9), 96)
    seqs = [(e.input_ids, e.labels) for e in examples]
    vocab = model.get_output_embeddings().weight.size(0)
    # Three scored rows per chunk: every batch spans several chunks, and chunks span sequences.
    chunked = sequence_nll(
        model, seqs, pad_id=tok.pad_token_id, batch_size=4, device=model.device, chunk_elements=3 * vocab
    )
    expected = []
    with torch.no_grad():
        for ids, labels in seqs:
            input_ids, mask, lab = pad_batch([(ids, labels)], tok.pad_token_id, model.device)
            nll = token_nll(model(input_ids=input_ids, attention_mask=mask).logits, lab)
            expected.append((float(nll.sum()), int((lab[:, 1:] != -100).sum())))
    assert [n for _, n in chunked] == [n for _, n in expected] and all(n > 0 for _, n in chunked)
    for (got, _), (want, _) in zip(chunked, expected, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
