"""Replay of general text (pipeline/train/replay.py): the suite-exclusion rule, the draw, the rows, the recipe."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from pipeline.chat_format import load_tokenizer
from pipeline.config import PipelineConfig, ReplayConfig, load_config
from pipeline.evaluate.general_suite import load_general_suite
from pipeline.train.manifest import MANIFEST
from pipeline.train.modeling import load_adapter
from pipeline.train.recipe import plan_steps, train_adapter
from pipeline.train.replay import (
    MixedExamples,
    build_replay,
    corpus_jsonl,
    encode_replay,
    exclude_suite,
    suite_texts,
)
from tests.conftest import make_records

GENERAL = [f"The {a} crossed the {b} field before the rain came in the afternoon." for a in "abcdefgh" for b in "xyz"]


def _config(model_dir: Path, source: Path, ratio: float = 1.0, **train: object) -> PipelineConfig:
    return load_config(
        base_model=str(model_dir),
        lora={"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": "all-linear"},
        train={
            "learning_rate": 5e-3,
            "epochs": 1,
            "batch_size": 8,
            "seed": 0,
            "replay": {"ratio": ratio, "source": str(source)},
            **train,
        },
    )


def test_suite_texts_are_the_general_suites_own() -> None:
    """Replay reads the suite from its files (train may not import evaluate): the same texts and questions."""
    suite = load_general_suite()
    assert suite_texts() == (*suite.texts, *(i.question for i in suite.mc_items))


def test_texts_holding_a_suite_text_or_question_are_excluded() -> None:
    suite = load_general_suite()
    text, question = suite.texts[3], suite.mc_items[5].question
    texts = [
        text,  # equal
        "Intro.  " + " ".join(text.split()) + "  More.",  # contains it, other whitespace
        f"Question: {question}\nAnswer: yes",  # contains a multiple-choice question
        "A cow says moo.",
    ]
    kept, dropped = exclude_suite(texts, suite_texts())
    assert kept == ["A cow says moo."] and dropped == 3


def test_replay_rows_never_carry_suite_texts(tiny_model_dir: Path, tmp_path: Path) -> None:
    """A source that holds the suite (as the demo base's pretraining corpus does): those texts are dropped and
    counted, the rest are drawn by seed, and the manifest record names the file by its sha256."""
    suite = load_general_suite()
    source = tmp_path / "general.jsonl"
    source.write_text(corpus_jsonl([*suite.texts[:5], *GENERAL, f"Question: {suite.mc_items[0].question}"]))
    cfg = _config(tiny_model_dir, source, ratio=0.5)
    tok = load_tokenizer(str(tiny_model_dir))
    replay = build_replay(tok, cfg, task_rows=20)
    assert replay is not None and len(replay.examples) == 10
    assert set(replay.texts_used) <= set(GENERAL)
    rec = replay.record()
    assert rec["excluded_suite_texts"] == 6 and rec["source_texts"] == len(GENERAL)
    assert rec["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest() and rec["rows"] == 10
    for ex in replay.examples:  # loss on every token, never a task id
        assert ex.labels == ex.input_ids and ex.task_id < 0
        assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids[-1] == tok.eos_token_id
    again = build_replay(tok, cfg, task_rows=20)
    assert again is not None and again.texts_used == replay.texts_used
    other = build_replay(tok, cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 1})}), 20)
    assert other is not None and other.texts_used != replay.texts_used


def test_more_rows_than_texts_reuses_whole_passes(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "general.txt"
    source.write_text("\n".join(GENERAL[:4]) + "\n\n")
    replay = build_replay(load_tokenizer(str(tiny_model_dir)), _config(tiny_model_dir, source, ratio=3.0), 3)
    assert replay is not None and len(replay.examples) == 9
    assert sorted(replay.texts_used[:4]) == sorted(GENERAL[:4])  # each text once before any twice


def test_long_texts_are_cut_to_max_length(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    pieces = encode_replay(tok, " ".join(GENERAL), max_length=32, task_id=-1)
    assert len(pieces) > 1 and all(2 <= len(p.input_ids) <= 32 for p in pieces)


def test_a_source_of_only_suite_texts_is_refused(tiny_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "suite.jsonl"
    source.write_text(corpus_jsonl(load_general_suite().texts))
    with pytest.raises(ValueError, match="every text contains a general-suite text"):
        build_replay(load_tokenizer(str(tiny_model_dir)), _config(tiny_model_dir, source), 10)


def test_off_by_default_and_bad_sources_named(tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(base_model=str(tiny_model_dir))
    assert cfg.train.replay == ReplayConfig() and build_replay(load_tokenizer(str(tiny_model_dir)), cfg, 10) is None
    with pytest.raises(ValueError, match=r"must be a \.txt"):
        ReplayConfig(ratio=1.0, source="corpus.parquet")
    missing = load_config(base_model="some/hub-model", train={"replay": {"ratio": 1.0}})
    with pytest.raises(ValueError, match="not a local directory"):
        build_replay(load_tokenizer(str(tiny_model_dir)), missing, 10)
    with pytest.raises(ValueError, match="does not exist"):
        build_replay(load_tokenizer(str(tiny_model_dir)), _config(tiny_model_dir, tmp_path / "none.jsonl"), 10)


def test_mixed_examples_index_task_rows_then_replay_rows(tiny_model_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_model_dir))
    task = encode_replay(tok, GENERAL[0], 64, task_id=1)
    replay = encode_replay(tok, GENERAL[1], 64, task_id=-1) + encode_replay(tok, GENERAL[2], 64, task_id=-2)
    mixed = MixedExamples(task, replay)
    assert len(mixed) == 3 and [e.task_id for e in mixed] == [1, -1, -2] and mixed[-1].task_id == -2


def test_recipe_trains_on_replay_rows_and_records_them(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Replay rows add steps (they are rows of the epoch) and their lineage lands in the manifest; the config
    fingerprint (the training work's identity) changes with them."""
    source = tmp_path / "general.jsonl"
    source.write_text(corpus_jsonl(GENERAL))
    records = make_records(16)
    cfg = _config(tiny_model_dir, source, ratio=1.0)
    result = train_adapter(cfg, records, records.iloc[:0], tmp_path / "adapter")
    assert result.steps == plan_steps(32, cfg)[1] == 4
    manifest = json.loads((tmp_path / "adapter" / MANIFEST).read_text())
    assert manifest["train_examples"] == 16 and manifest["replay"]["rows"] == 16
    assert manifest["replay"]["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    off = cfg.model_copy(update={"train": cfg.train.model_copy(update={"replay": ReplayConfig()})})
    assert off.training_fingerprint() != cfg.training_fingerprint()


def _kl_to_base_on(model_dir: Path, adapter_dir: Path, texts: list[str]) -> float:
    """Mean KL(base || adapter) per next-token position over `texts`."""
    tok = load_tokenizer(str(model_dir))
    model = load_adapter(str(model_dir), adapter_dir, torch.device("cpu"))
    total, n = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            adapted = torch.log_softmax(model(ids).logits[0].float(), -1)
            with model.disable_adapter():
                base = torch.log_softmax(model(ids).logits[0].float(), -1)
            total += float((base.exp() * (base - adapted)).sum())
            n += ids.size(1)
    return total / n


def test_kl_replay_keeps_general_text_where_the_base_had_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    """train.replay.loss=kl: the same run as with ce, but the trained adapter stays far closer to the base on
    the replay texts (ce fits them, kl holds the base's predictions); the manifest records loss and weight."""
    source = tmp_path / "general.jsonl"
    source.write_text(corpus_jsonl(GENERAL))
    records = make_records(16)
    kl = {}
    for loss in ("ce", "kl"):
        cfg = _config(tiny_model_dir, source, ratio=1.0, epochs=3)
        cfg = cfg.model_copy(
            update={
                "train": cfg.train.model_copy(
                    update={"replay": cfg.train.replay.model_copy(update={"loss": loss, "weight": 2.0})}
                )
            }
        )
        result = train_adapter(cfg, records, records.iloc[:0], tmp_path / loss)
        assert result.manifest["replay"]["loss"] == loss and result.manifest["replay"]["weight"] == 2.0
        kl[loss] = _kl_to_base_on(tiny_model_dir, tmp_path / loss, GENERAL[:8])
    assert kl["kl"] < 0.25 * kl["ce"], kl
