"""Our lm-eval backend ("lora-pipeline") against lm-eval's stock `hf` backend: same requests, same scores.

Both wrap the same PEFT model; each request lm-eval builds for the built-in suite is scored by both,
for the base (inside `disable_adapter()`) and the adapter, at the model's full window and at a short
one that forces left truncation and several rolling windows per text.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
from lm_eval.api import registry
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from pipeline.chat_format import load_tokenizer
from pipeline.config import LM_EVAL_BACKEND
from pipeline.evaluate.forgetting import compare
from pipeline.evaluate.general_suite import load_general_suite
from pipeline.evaluate.harness import harness_forgetting_scores, load_tasks, task_manager
from pipeline.evaluate.intervals import accuracy_delta
from pipeline.evaluate.lm_eval_backend import PipelineLM, _rows
from pipeline.evaluate.merged_adapter import merged_adapter

TASKS = ("general_suite_mc", "general_suite_ppl")


@pytest.fixture(scope="module")
def adapted(tiny_model_dir: Path) -> PeftModel:
    """The tiny base with a LoRA adapter whose B matrices are non-zero (so the adapter changes every score)."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.2)
    model.eval()
    return model


@pytest.fixture(scope="module")
def requests() -> dict[str, list[Any]]:
    """The suite's requests as lm-eval builds them, by request type."""
    loaded = load_tasks(task_manager(TASKS, None), TASKS, num_fewshot=0)
    out: dict[str, list[Any]] = {"loglikelihood": [], "loglikelihood_rolling": []}
    for task in loaded["tasks"].values():
        task.build_all_requests(rank=0, world_size=1)
        for inst in task.instances:
            out[inst.request_type].append(inst)
    assert len(out["loglikelihood"]) == 320 and len(out["loglikelihood_rolling"]) == 60
    return out


def _both(model: PeftModel, tiny: Path, batch_size: int, **kw: Any) -> tuple[PipelineLM, HFLM]:
    tok = load_tokenizer(str(tiny))
    return (
        PipelineLM(pretrained=model, tokenizer=tok, batch_size=batch_size, **kw),
        HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, **kw),
    )


def _assert_same(ours: PipelineLM, stock: HFLM, requests: dict[str, list[Any]]) -> None:
    got, want = ours.loglikelihood(requests["loglikelihood"]), stock.loglikelihood(requests["loglikelihood"])
    assert [g for _, g in got] == [g for _, g in want]  # greedy flags
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in want], abs=1e-4, rel=1e-5)
    got_r = ours.loglikelihood_rolling(requests["loglikelihood_rolling"])
    want_r = stock.loglikelihood_rolling(requests["loglikelihood_rolling"])
    assert got_r == pytest.approx(want_r, abs=1e-3, rel=1e-5)


@pytest.mark.parametrize("side", ["base", "adapter"])
def test_every_request_scores_like_the_stock_hf_backend(
    adapted: PeftModel, tiny_model_dir: Path, requests: dict[str, list[Any]], side: str
) -> None:
    ours, stock = _both(adapted, tiny_model_dir, batch_size=16)
    if side == "base":
        with adapted.disable_adapter():
            _assert_same(ours, stock, requests)
    else:
        _assert_same(ours, stock, requests)


def test_left_truncation_and_rolling_windows_match_at_a_short_window(
    adapted: PeftModel, tiny_model_dir: Path, requests: dict[str, list[Any]]
) -> None:
    """max_length 12: contexts are cut from the left and every text spans several rolling windows."""
    ours, stock = _both(adapted, tiny_model_dir, batch_size=7, max_length=12)
    _assert_same(ours, stock, requests)


def test_forgetting_scores_equal_across_backends(adapted: PeftModel, tiny_model_dir: Path) -> None:
    """Through lm-eval's metrics and aggregation: per-document accuracies equal, perplexity inputs within 1e-6."""
    tok = load_tokenizer(str(tiny_model_dir))
    kw: dict[str, Any] = {"suite_dir": None, "batch_size": 16}
    ours = harness_forgetting_scores(adapted, tok, TASKS, backend=LM_EVAL_BACKEND, **kw)
    stock = harness_forgetting_scores(adapted, tok, TASKS, backend="hf", **kw)
    for got, want in zip(ours, stock, strict=True):  # base, then adapter
        assert got["general_suite_mc"].values == want["general_suite_mc"].values
        assert got["general_suite_ppl"].weights == want["general_suite_ppl"].weights
        assert got["general_suite_ppl"].values == pytest.approx(want["general_suite_ppl"].values, rel=1e-6)
    # The adapter changed the scores: the comparison is not base-vs-base.
    assert ours[0]["general_suite_ppl"].values != ours[1]["general_suite_ppl"].values


def test_suite_groups_reach_the_scores_and_the_interval(
    adapted: PeftModel, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A suite whose items carry a `group` (one fact in several wordings): lm-eval hands the group through to the
    per-document scores, and the forgetting comparison resamples groups, not items."""
    suite = load_general_suite()
    (tmp_path / "perplexity.jsonl").write_text(
        "".join(json.dumps({"id": t.id, "domain": t.domain, "text": t.text}) + "\n" for t in suite.text_items)
    )
    rows = [{**asdict(m), "choices": list(m.choices), "group": f"pair-{i // 2}"} for i, m in enumerate(suite.mc_items)]
    (tmp_path / "multiple_choice.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(str(tiny_model_dir))
    base, adapter = harness_forgetting_scores(adapted, tok, TASKS, suite_dir=str(tmp_path), batch_size=16)
    mc = base["general_suite_mc"]
    assert mc.groups == [f"pair-{i // 2}" for i in range(len(suite.mc_items))]
    assert base["general_suite_ppl"].groups == [""] * len(suite.text_items)
    (got,) = [c for c in compare(base, adapter, samples=300, confidence=0.95, seed=1) if c.kind == "accuracy"]
    kw: dict[str, Any] = {"samples": 300, "seed": 1}
    assert got.delta == accuracy_delta(mc.values, adapter["general_suite_mc"].values, groups=mc.groups, **kw)


def test_choices_of_one_item_share_one_row_and_rows_stay_within_the_window() -> None:
    reqs = [(None, [1, 5, 6], [7]), (None, [1, 5, 6], [8, 9]), (None, [1, 2], [3])]
    shared = _rows(reqs, max_length=64, share=True)
    assert [r.context for r in shared] == [[1, 5, 6], [1, 2]]
    first = shared[0]
    # context, then branch 0 adds nothing ([7][:-1]), branch 1 adds 8 at the position after the context.
    assert first.tokens == [1, 5, 6, 8] and first.positions == [0, 1, 2, 3] and first.branch == [-1, -1, -1, 1]
    assert first.targets == [(0, [2], [7]), (1, [2, 3], [8, 9])]
    assert len(_rows(reqs, max_length=64, share=False)) == 3
    # A row that would outgrow the window starts a new row with the same context.
    long = [(None, [1, 2], [3, 4, 5, 6]) for _ in range(3)]
    assert [len(r.targets) for r in _rows(long, max_length=8, share=True)] == [2, 1]
    # HFLM's window: (context + continuation)[-(max_length + 1):], the context cut from the left.
    (row,) = _rows([(None, [1, 2, 3, 4, 5], [6, 7])], max_length=4, share=True)
    assert row.context == [3, 4, 5]


def test_backend_is_registered_with_lm_eval() -> None:
    """`lm_eval --model lora-pipeline` and simple_evaluate(model="lora-pipeline") find it."""
    assert registry.get_model(LM_EVAL_BACKEND) is PipelineLM


def test_paired_sides_score_once_and_serve_the_other_side_without_the_model(
    adapted: PeftModel, tiny_model_dir: Path, requests: dict[str, list[Any]]
) -> None:
    """Under paired(): the first side's call scores both sides; the second side's identical call runs no forward."""
    plain, _ = _both(adapted, tiny_model_dir, batch_size=16)
    with adapted.disable_adapter():
        want_base = (
            plain.loglikelihood(requests["loglikelihood"]),
            plain.loglikelihood_rolling(requests["loglikelihood_rolling"]),
        )
    want_adapter = (
        plain.loglikelihood(requests["loglikelihood"]),
        plain.loglikelihood_rolling(requests["loglikelihood_rolling"]),
    )
    ours, _ = _both(adapted, tiny_model_dir, batch_size=16)
    calls: list[int] = []
    hook = adapted.register_forward_hook(lambda *_: calls.append(1))
    try:
        with ours.paired({"base": adapted.disable_adapter, "adapter": lambda: merged_adapter(adapted)}):
            with ours.side("base"):
                got_base = (
                    ours.loglikelihood(requests["loglikelihood"]),
                    ours.loglikelihood_rolling(requests["loglikelihood_rolling"]),
                )
            forwards = len(calls)
            with ours.side("adapter"):
                got_adapter = (
                    ours.loglikelihood(requests["loglikelihood"]),
                    ours.loglikelihood_rolling(requests["loglikelihood_rolling"]),
                )
            assert len(calls) == forwards > 0  # the adapter side was scored during the base side's call
            with ours.side("adapter"):  # a call the other side never made is scored, not served
                (fresh,) = ours.loglikelihood(requests["loglikelihood"][:1])
            assert len(calls) > forwards
    finally:
        hook.remove()
    assert got_base == want_base  # the same code path inside disable_adapter(): identical
    assert [g for _, g in got_adapter[0]] == [g for _, g in want_adapter[0]]
    assert [ll for ll, _ in got_adapter[0]] == pytest.approx([ll for ll, _ in want_adapter[0]], abs=1e-4, rel=1e-5)
    assert got_adapter[1] == pytest.approx(want_adapter[1], abs=1e-3, rel=1e-5)
    assert fresh[0] == pytest.approx(want_adapter[0][0][0], abs=1e-4)
    assert got_adapter[1] != got_base[1]


def test_sides_are_named_and_pairing_does_not_nest(adapted: PeftModel, tiny_model_dir: Path) -> None:
    ours, _ = _both(adapted, tiny_model_dir, batch_size=16)
    with ours.paired({"base": adapted.disable_adapter}):
        with pytest.raises(ValueError, match="unknown side 'adapter'"), ours.side("adapter"):
            pass
        with pytest.raises(RuntimeError, match="does not nest"), ours.paired({}):
            pass


def test_generation_runs_in_the_current_side_under_pairing(adapted: PeftModel, tiny_model_dir: Path) -> None:
    """Generation is not shared between sides: under side("base") it runs with the adapter disabled."""
    gen = {"until": ["\n\n"], "max_gen_toks": 12, "do_sample": False}
    reqs = [Instance("generate_until", {}, ("Question: What is the weather today?\nAnswer:", gen), 0)]
    ours, _ = _both(adapted, tiny_model_dir, batch_size=4)
    with adapted.disable_adapter():
        want_base = ours.generate_until(reqs)
    want_adapter = ours.generate_until(reqs)
    assert want_base != want_adapter  # else this test could not tell the sides apart
    with ours.paired({"base": adapted.disable_adapter, "adapter": lambda: merged_adapter(adapted)}):
        with ours.side("base"):
            assert ours.generate_until(reqs) == want_base
        with ours.side("adapter"):
            assert ours.generate_until(reqs) == want_adapter
