"""Replay of general text during LoRA training: plain language-modelling rows mixed into the task batches.

Training only on the task pulls the model away from everything else it knew (catastrophic forgetting);
mixing in rows of general text, the kind the base was pretrained on, is the standard mitigation. A replay
row is a text with the loss on every token (no chat template, no prompt mask), wrapped in BOS/EOS as in
pretraining and cut into pieces of at most `data.max_length` tokens. `train.replay.ratio` rows per task row
are drawn from the source by `train.seed` and mixed into the same epoch order as the task rows.

The rule that keeps the forgetting check honest: no replay text may contain a text or a question of the
general suite the check scores (pipeline/evaluate/general_suite/, or `eval.general_suite`); such texts
are dropped and counted (`ReplayRows.excluded`), and a source with nothing else left stops the run.
The suite is read from its files here (train may not import `pipeline.evaluate`); tests/test_replay.py
checks that these are the suite's own texts.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from pipeline.chat_format import Example
from pipeline.config import PipelineConfig
from pipeline.jsonl import read_jsonl_objects
from pipeline.train.tokenized import RowSequence

# The built-in general suite's files (package data of pipeline.evaluate.general_suite, read as data).
BUILTIN_SUITE_DIR = Path(__file__).resolve().parents[1] / "evaluate" / "general_suite"
BASE_PREFIX = "base:"


@dataclass(frozen=True)
class ReplayRows:
    """The replay rows of one run and what lineage records about them."""

    examples: list[Example]
    source: str  # the resolved file
    source_sha256: str  # of the file's bytes
    texts: int  # usable texts in the source (after the suite exclusion)
    excluded: int  # source texts dropped because they contain a general-suite text or question
    ratio: float
    task_rows: int
    loss: str = "ce"  # train.replay.loss
    weight: float = 1.0  # train.replay.weight
    texts_used: list[str] = field(default_factory=list, repr=False)

    def record(self) -> dict[str, Any]:
        """What the adapter manifest stores (`replay`)."""
        return {
            "rows": len(self.examples),
            "ratio": self.ratio,
            "task_rows": self.task_rows,
            "source": self.source,
            "source_sha256": self.source_sha256,
            "source_texts": self.texts,
            "excluded_suite_texts": self.excluded,
            "loss": self.loss,
            "weight": self.weight,
        }


def suite_texts(suite_dir: str | Path | None = None) -> tuple[str, ...]:
    """The general suite's perplexity texts and multiple-choice questions (the built-in suite for None)."""
    root = Path(suite_dir) if suite_dir is not None else BUILTIN_SUITE_DIR
    out: list[str] = []
    for _, obj in read_jsonl_objects(root / "perplexity.jsonl", f"{root}/perplexity.jsonl"):
        out.append(str(obj["text"]))
    for _, obj in read_jsonl_objects(root / "multiple_choice.jsonl", f"{root}/multiple_choice.jsonl"):
        out.append(str(obj["question"]))
    return tuple(out)


def _norm(text: str) -> str:
    return " ".join(text.split())


def exclude_suite(texts: Sequence[str], suite: Sequence[str]) -> tuple[list[str], int]:
    """(texts that contain no suite text or question, number dropped); whitespace is normalized first."""
    needles = [_norm(s) for s in suite if s.strip()]
    kept = [t for t, flat in zip(texts, map(_norm, texts), strict=True) if not any(n in flat for n in needles)]
    return kept, len(texts) - len(kept)


def resolve_source(source: str, base_model: str) -> Path:
    """The replay file: `base:NAME` inside the base model's local directory, else the path itself."""
    if source.startswith(BASE_PREFIX):
        base = Path(base_model)
        if not base.is_dir():
            raise ValueError(
                f"train.replay.source={source!r} names a file in the base model's directory, but base_model "
                f"{base_model!r} is not a local directory; give train.replay.source as a path to a .txt/.jsonl file"
            )
        path = base / source[len(BASE_PREFIX) :]
    else:
        path = Path(source)
    if not path.is_file():
        raise ValueError(f"train.replay.source: {path} does not exist; point it at a .txt or .jsonl file of texts")
    return path


def read_texts(path: Path) -> list[str]:
    """Texts of a .txt file (one per non-empty line) or a .jsonl file (the "text" field of each object)."""
    if path.suffix == ".jsonl":
        texts = []
        for lineno, obj in read_jsonl_objects(path, str(path)):
            text = obj.get("text")
            if not isinstance(text, str):
                raise ValueError(f"{path} line {lineno}: a replay row needs a string field 'text'")
            texts.append(text)
    else:
        texts = path.read_text(encoding="utf-8").splitlines()
    return [t for t in texts if t.strip()]


def encode_replay(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int, task_id: int) -> list[Example]:
    """<s> text </s> with labels on every token, in pieces of at most `max_length` tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return [
        Example(task_id=task_id, input_ids=ids[i : i + max_length], labels=ids[i : i + max_length], replay=True)
        for i in range(0, len(ids), max_length)
        if len(ids[i : i + max_length]) > 1  # a one-token piece has nothing to predict
    ]


def build_replay(tokenizer: PreTrainedTokenizerBase, config: PipelineConfig, task_rows: int) -> ReplayRows | None:
    """`round(ratio * task_rows)` replay rows drawn by seed from the source, suite texts excluded; None when off."""
    rc = config.train.replay
    if rc.ratio == 0:
        return None
    path = resolve_source(rc.source, config.base_model)
    raw = path.read_bytes()
    texts, excluded = exclude_suite(read_texts(path), suite_texts(config.eval.general_suite))
    if not texts:
        raise ValueError(
            f"train.replay.source {path}: every text contains a general-suite text or question ({excluded} "
            "dropped); replay must not train on what the forgetting check scores — use other general text"
        )
    k = round(rc.ratio * task_rows)
    rng = random.Random(config.train.seed)
    # Without replacement while the source lasts; whole reshuffled passes when k exceeds it.
    picked: list[str] = []
    while len(picked) < k:
        picked += rng.sample(texts, min(len(texts), k - len(picked)))
    examples: list[Example] = []
    for text in picked:
        # Negative task ids: a replay row is never mistaken for a Label Studio task in errors or logs.
        examples += encode_replay(tokenizer, text, config.data.max_length, task_id=-(len(examples) + 1))
    return ReplayRows(
        examples=examples[:k] if len(examples) > k else examples,
        source=str(path),
        source_sha256=hashlib.sha256(raw).hexdigest(),
        texts=len(texts),
        excluded=excluded,
        ratio=rc.ratio,
        task_rows=task_rows,
        loss=rc.loss,
        weight=rc.weight,
        texts_used=picked,
    )


class MixedExamples(RowSequence):
    """The task examples followed by the replay rows: one index space for the epoch order to shuffle."""

    def __init__(self, task: Sequence[Example], replay: Sequence[Example]) -> None:
        self._task, self._replay = task, replay

    def __len__(self) -> int:
        return len(self._task) + len(self._replay)

    def _row(self, i: int) -> Example:
        n = len(self._task)
        return self._task[i] if i < n else self._replay[i - n]


def corpus_jsonl(texts: Sequence[str]) -> str:
    """Texts as a replay source file's content (one {"text": ...} per line)."""
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)
