"""The demo's base model: a small Llama-style LM pretrained on a generated general corpus, built once and cached.

`build_tiny_model` (tests) makes a 2-layer, hidden-64 model that cannot write a sentence, so an adapter on
it has nothing to adapt. This base is larger (about 1.6 million parameters, a vocabulary sized for the
corpus) and pretrained long enough to answer everyday questions in the chat template and speak everyday
travel English; the LoRA then teaches it the ferry desk. By default (`corpus="world"`) it learns a generated
world (pipeline/demo/world_corpus.py: about 1.2 passes over some 10,000 distinct paragraphs) and generalises,
so the forgetting check scores it on a held-out suite of that world (pipeline/demo/general_suite/, the demo
config's `eval.general_suite`): texts it never saw, questions in wordings it never read. `corpus="demo"` is the
earlier base (pipeline/demo/corpus.py, the built-in suite by heart, about 12 passes), kept for comparison
(bench/results/demo_learning.md). The directory name carries a hash of every build setting, so a second demo
(or test session) with the same settings loads it instead of building it again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pipeline.demo.corpus import Dialogue, general_dialogues, general_texts
from pipeline.demo.replay_questions import replay_texts
from pipeline.demo.tiny_model import build_tokenizer
from pipeline.demo.world_corpus import CORPUS_PARAGRAPHS, world_dialogues, world_texts
from pipeline.train.cpu_threads import cpu_threads
from pipeline.train.replay import corpus_jsonl

MARKER = "demo_base.json"
# The general text the base was pretrained on, shipped next to its weights: the demo's replay source
# (train.replay.source: base:general_corpus.jsonl). Replay drops the general suite's texts from it.
CORPUS_FILE = "general_corpus.jsonl"
# A world base writes that file with this many paragraphs to a line: a replay row is one text (up to
# data.max_length tokens), and four paragraphs (about 180 tokens) replay four times the general text of one
# paragraph for about 1.4x the time (bench/results/demo_learning.md: suite perplexity +47% -> +25% at the bound).
WORLD_DOC_PARAGRAPHS = 4
# A world base also ships its replay file: its paragraphs two to a row, each row followed by general questions
# in wordings the base never read (pipeline/demo/replay_questions.py); the demo's train.replay.source is
# base:general_replay.jsonl. One paragraph to a row trained 5% faster but left the perplexity rule near its
# budget (+4.1% and +5.4% at the bound over two seeds, against +2.7% and +2.8%; bench/results/demo_learning.md).
REPLAY_FILE = "general_replay.jsonl"
REPLAY_PARAGRAPHS = 2


@dataclass(frozen=True)
class DemoBaseSettings:
    """Every knob of the build; their hash names the cache directory."""

    hidden_size: int = 192
    num_layers: int = 3
    num_heads: int = 6
    vocab_size: int = 2048  # the corpus has about 2,000 distinct words; more would leave rows untrained
    block_size: int = 128  # tokens per packed pretraining row
    batch_size: int = 8
    steps: int = 800  # about 12 passes over the corpus: the suite by heart, travel English fluent
    learning_rate: float = 3e-3
    seed: int = 0
    # One intra-op thread unless the CPU thread governor runs (LORA_PIPELINE_CPU_THREADS=auto, which the demo sets:
    # the idle cores, pipeline/train/cpu_threads.py): on a 2-core machine shared with other jobs a fixed two ran 10x
    # slower per step (2.15 s vs 0.22 s at load 7). The weights do not depend on the thread count (tested).
    threads: int = 1
    corpus_version: int = 2  # bump when pipeline/demo/corpus.py changes what it generates
    # "world": pipeline/demo/world_corpus.py, a base that generalises, for the held-out suite
    # pipeline/demo/general_suite/ (the demo's eval.general_suite); "demo": pipeline/demo/corpus.py, the earlier
    # base with the built-in suite by heart.
    corpus: Literal["demo", "world"] = "world"
    # World only: paragraphs of the world in the corpus, and how often each dialogue is repeated per pass (the
    # dialogues teach the chat template and the answer shapes the ferry desk's rows also use).
    world_paragraphs: int = CORPUS_PARAGRAPHS
    dialogue_repeats: int = 4

    def parts(self) -> tuple[tuple[str, ...], tuple[Dialogue, ...]]:
        """(plain texts, dialogues) of the pretraining corpus, each once."""
        if self.corpus == "world":
            return world_texts(self.world_paragraphs), world_dialogues()
        return general_texts(), general_dialogues()

    def digest(self) -> str:
        settings = asdict(self)
        if self.corpus == "demo":  # the demo's cache name as before the world corpus existed
            for key in ("corpus", "world_paragraphs", "dialogue_repeats"):
                settings.pop(key)
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def _pretraining_stream(tokenizer: PreTrainedTokenizerFast, s: DemoBaseSettings) -> list[int]:
    """Every text once and every dialogue once (world: `dialogue_repeats` times), as token ids, each wrapped in
    <s> ... </s> (dialogues by the chat template)."""
    texts, dialogues = s.parts()
    repeats = s.dialogue_repeats if s.corpus == "world" else 1
    ids: list[int] = []
    for text in texts:
        ids += [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]
    for question, answer in dialogues * repeats:
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rendered = tokenizer.apply_chat_template(chat, tokenize=False)
        ids += tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return ids


def _pretrain(model: LlamaForCausalLM, stream: list[int], s: DemoBaseSettings) -> float:
    """Next-token training on random windows of the stream: warmup then cosine decay; returns the last loss."""
    g = torch.Generator().manual_seed(s.seed)
    data = torch.tensor(stream, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=s.learning_rate, weight_decay=0.01, betas=(0.9, 0.95))
    warmup = max(1, s.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: min(1.0, (i + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / s.steps)))
    )
    model.train()
    loss_value = float("nan")
    bar = tqdm(range(s.steps), desc="pretraining the demo base", unit="step")
    # LORA_PIPELINE_CPU_THREADS=auto (the demo): the idle cores instead of `s.threads`; the weights are the same
    # bit for bit (tests/test_cpu_threads.py), so the setting stays in the cache name unchanged.
    with cpu_threads(torch.device("cpu")) as step_threads:
        for _ in bar:
            starts = torch.randint(len(data) - s.block_size - 1, (s.batch_size,), generator=g)
            batch = torch.stack([data[i : i + s.block_size] for i in starts.tolist()])  # (B, T)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())
            bar.set_postfix(loss=f"{loss_value:.3f}", **step_threads())
    model.eval()
    return loss_value


def _write_corpus(model_dir: Path, s: DemoBaseSettings) -> None:
    """The plain pretraining texts as `CORPUS_FILE` (world: `WORLD_DOC_PARAGRAPHS` to a line, and `REPLAY_FILE`,
    `REPLAY_PARAGRAPHS` to a row; each written to a temp name and renamed: never half a file)."""
    texts, _ = s.parts()
    if s.corpus == "world":
        _write_atomically(model_dir / REPLAY_FILE, _replay_content(texts))
        texts = _grouped(texts, WORLD_DOC_PARAGRAPHS)
    _write_atomically(model_dir / CORPUS_FILE, corpus_jsonl(texts))


def _replay_content(texts: tuple[str, ...]) -> str:
    return corpus_jsonl(replay_texts(_grouped(texts, REPLAY_PARAGRAPHS)))


def _refresh_replay(model_dir: Path, s: DemoBaseSettings) -> None:
    """Rewrite a cached base's `REPLAY_FILE` when pipeline/demo/replay_questions.py now generates another one
    (about a second; the weights do not depend on it)."""
    content = _replay_content(s.parts()[0])
    if (model_dir / REPLAY_FILE).read_text() != content:
        _write_atomically(model_dir / REPLAY_FILE, content)


def _grouped(texts: tuple[str, ...], k: int) -> tuple[str, ...]:
    return tuple("\n\n".join(texts[i : i + k]) for i in range(0, len(texts), k))


def _write_atomically(path: Path, content: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(content)
    tmp.rename(path)


def build_demo_base(cache_root: str | Path, settings: DemoBaseSettings = DemoBaseSettings()) -> Path:
    """The demo base under `cache_root/demo-base-<hash of settings>`: loaded if built before, else built and saved."""
    out = Path(cache_root) / f"demo-base-{settings.digest()}"
    if (out / MARKER).is_file():
        shipped = [CORPUS_FILE, REPLAY_FILE] if settings.corpus == "world" else [CORPUS_FILE]
        if not all((out / name).is_file() for name in shipped):  # cached before these files were shipped with it
            _write_corpus(out, settings)
        elif settings.corpus == "world":  # the replay questions are code, not weights: a base keeps the current ones
            _refresh_replay(out, settings)
        return out
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    texts, dialogues = settings.parts()
    corpus = list(texts) + [t for qa in dialogues for t in qa]
    tokenizer = build_tokenizer(corpus, vocab_size=settings.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        intermediate_size=settings.hidden_size * 8 // 3 // 16 * 16,
        num_hidden_layers=settings.num_layers,
        num_attention_heads=settings.num_heads,
        num_key_value_heads=max(1, settings.num_heads // 2),
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    stream = _pretraining_stream(tokenizer, settings)
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        final_loss = _pretrain(model, stream, settings)
    finally:
        torch.set_num_threads(threads)
    # Build next to the target and rename: an interrupted build never looks finished.
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _write_corpus(tmp, settings)
    (tmp / MARKER).write_text(
        json.dumps(
            {
                "built_by": "lora-pipeline demo (pipeline/demo/demo_base.py)",
                "settings": asdict(settings),
                "settings_hash": settings.digest(),
                "corpus_tokens": len(stream),
                "pretrain_final_loss": final_loss,
                "parameters": sum(p.numel() for p in model.parameters()),
                "build_seconds": round(time.perf_counter() - started, 1),
            },
            indent=2,
        )
    )
    if out.exists():  # a concurrent build finished first; keep its copy
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return out
