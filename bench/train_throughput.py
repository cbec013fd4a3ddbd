"""Training throughput and memory: our recipe vs TRL's SFTTrainer + PEFT, side by side, same work.

Run (needs the `bench` extra for TRL:  pip install -e '.[bench]'):
    .venv/bin/python bench/train_throughput.py --config tiny        # CPU, the project's tiny model (seconds)
    .venv/bin/python bench/train_throughput.py --config realistic   # CPU, 32k vocabulary, pairs up to ~1k tokens
    .venv/bin/python bench/train_throughput.py --config gpu-0.5b    # CUDA: Qwen2-0.5B shape, bf16, MFU

Every configuration builds its model offline with random weights (no hub) and its pairs from the packaged sample
pairs, with lengths varied widely (responses repeated to a log-uniform target length, and a context document on
half of the prompts). Each implementation gets the same model, pairs, LoRA config, effective batch, steps, LR
schedule and seed. Peers:
  ours              pipeline.train.recipe.train_adapter with the config's defaults (packing on)
  trl               SFTTrainer + PEFT as a user configures it: prompt-completion data, SFTConfig defaults apart
                    from the shared hyperparameters below
  trl-padding-free  the same with SFTConfig(padding_free=True) (TRL's own padding-free batches; TRL then needs
                    max_length=None, which truncates nothing here since every pair fits)
Each run is a fresh subprocess (so its memory is its own); the order rotates each round to spread machine noise,
and we report medians. Tokens/s counts non-pad input tokens over the training loop's time (TRL: its own
`num_tokens` / `train_runtime`). Peak memory is the process's peak RSS (sampled every 5 ms from just after the
imports to the end of training: model load included, held-out scoring excluded) and, on CUDA, the peak allocated
memory of the training loop. "Above baseline" subtracts the RSS just before the model load (after the imports;
for TRL also after building its Dataset and SFTConfig), which is mostly the Python/torch runtime. The final loss compared is the held-out loss of each trained adapter, scored by the same function on
the same examples. Results go to bench/results/train_throughput.{json,md}, one section per configuration.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

PEERS = ("ours", "trl", "trl-padding-free")
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": "all-linear"}
# Gradient checkpointing on for both: it is TRL's SFTConfig default, and the comparison must be the same work.
# No warmup: TRL rounds a warmup fraction up and we round it down, which over a few steps is one step less of
# learning for TRL.
TRAIN = {"learning_rate": 1e-3, "warmup_fraction": 0.0, "seed": 0, "gradient_checkpointing": True}


@dataclass(frozen=True)
class Shape:
    """One benchmark configuration: model shape, data lengths and run size."""

    arch: Literal["llama", "qwen2"]
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int | None  # None: the tokenizer's own size; else the logits width (rows past the tokenizer go unused)
    tie_embeddings: bool
    max_length: int
    response_tokens: tuple[int, int]  # log-uniform target range of a response's length
    context_tokens: tuple[int, int] | None  # a context document on half of the prompts, log-uniform length
    n_train: int
    n_eval: int
    batch_size: int
    grad_accum_steps: int
    steps: int
    rounds: int
    eval_batch_size: int
    needs_cuda: bool = False


SHAPES = {
    # The project's tiny Llama (vocab 1024, hidden 128): RSS here is mostly the runtime, not training.
    "tiny": Shape("llama", 128, 2, 8, 4, 256, None, False, 512, (30, 270), None, 256, 32, 8, 2, 8, 3, 16),
    # Same architecture at a realistic logits width and sequence lengths, still a few minutes on 2 CPU cores.
    "realistic": Shape("llama", 256, 4, 8, 4, 688, 32000, False, 1024, (24, 700), (32, 300), 128, 16, 4, 2, 3, 2, 4),
    # Qwen2-0.5B's shape (494M parameters, tied embeddings, vocab 151936): the H100 comparison.
    "gpu-0.5b": Shape(
        "qwen2", 896, 24, 14, 2, 4864, 151936, True, 2048, (32, 1400), (64, 600), 512, 32, 8, 2, 20, 3, 4, True
    ),
}


class PeakRSS:
    """Samples this process's RSS every 5 ms in a thread (CPU peak memory without allocator hooks)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def _lengths_to(rng: random.Random, lo: int, hi: int) -> int:
    return round(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def prepare(work: Path, shape: Shape) -> None:
    """Random-weight model + tokenizer in `work/model`; train/eval pairs with widely varied lengths."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from pipeline.demo.sample_data import sample_corpus, sample_records
    from pipeline.demo.tiny_model import build_tokenizer

    tok = build_tokenizer(sample_corpus(), vocab_size=1024)
    cls, config_cls = (LlamaForCausalLM, LlamaConfig) if shape.arch == "llama" else (Qwen2ForCausalLM, Qwen2Config)
    config = config_cls(
        vocab_size=shape.vocab or len(tok),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        max_position_embeddings=max(2048, shape.max_length),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=shape.tie_embeddings,
    )
    torch.manual_seed(0)
    model = cls(config)
    if shape.needs_cuda:
        model = model.to(torch.bfloat16)  # what a hub checkpoint of this size ships as
    model.save_pretrained(work / "model")
    tok.save_pretrained(work / "model")
    del model

    records = sample_records(shape.n_train + shape.n_eval, seed=1)
    rng = random.Random(0)
    budget = shape.max_length - 64  # room for the chat template and EOS
    responses, contexts = [], []
    pool = list(records["response"])
    for resp in records["response"]:
        per = max(1, len(tok(resp)["input_ids"]))
        ctx_tokens = _lengths_to(rng, *shape.context_tokens) if shape.context_tokens and rng.random() < 0.5 else 0
        resp_tokens = min(_lengths_to(rng, *shape.response_tokens), budget - ctx_tokens)
        responses.append(" ".join([resp] * max(1, resp_tokens // per)))
        context = []
        while ctx_tokens > 0:
            context.append(rng.choice(pool))
            ctx_tokens -= 34  # the sample responses average ~34 tokens
        contexts.append(" ".join(context) or None)
    records["response"], records["context"] = responses, contexts
    records.iloc[: shape.n_train].to_parquet(work / "train.parquet")
    records.iloc[shape.n_train :].to_parquet(work / "eval.parquet")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_ours(work: Path, shape: Shape) -> dict[str, Any]:
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.train.modeling import load_adapter
    from pipeline.train.recipe import train_adapter

    train_df = pd.read_parquet(work / "train.parquet")
    train = {"batch_size": shape.batch_size, "grad_accum_steps": shape.grad_accum_steps}
    cfg = load_config(
        base_model=str(work / "model"),
        data={"max_length": shape.max_length},
        lora=LORA,
        train={**TRAIN, **train, "epochs": 100, "max_steps": shape.steps, "device": _device()},
    )
    with PeakRSS() as mem:
        result = train_adapter(cfg, train_df, train_df.iloc[:0], work / f"ours-{os.getpid()}")
    device = _device()
    model = load_adapter(str(work / "model"), result.adapter_dir, _torch_device(device))
    return {
        "tokens_per_s": result.tokens_per_s,
        "peak_rss_bytes": mem.peak,
        "peak_rss_over_baseline_bytes": mem.peak - mem.baseline,
        "baseline_rss_bytes": mem.baseline,
        "peak_cuda_bytes": result.peak_memory_bytes if device == "cuda" else None,
        "final_train_loss": result.final_loss,
        "eval_loss": _held_out_loss(model, work, shape),
        "steps": result.steps,
        "padding_fraction": statistics.mean(h.padding_fraction for h in result.history),
        "mfu": result.mfu,
    }


def worker_trl(work: Path, shape: Shape, *, padding_free: bool) -> dict[str, Any]:
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from pipeline.chat_format import load_tokenizer, pair_messages
    from pipeline.train.throughput import model_flops_utilization

    train_df = pd.read_parquet(work / "train.parquet")
    # TRL's conversational prompt-completion format: chat template applied, loss on the completion only.
    # The user turn is built exactly as our recipe builds it (context, blank line, prompt).
    ds = Dataset.from_list(
        [
            {"prompt": pair_messages(row), "completion": [{"role": "assistant", "content": row.response}]}
            for row in train_df.itertuples(index=False)
        ]
    )
    device = _device()
    tok = load_tokenizer(str(work / "model"))
    args = SFTConfig(
        output_dir=str(work / f"trl-{os.getpid()}"),
        per_device_train_batch_size=shape.batch_size,
        gradient_accumulation_steps=shape.grad_accum_steps,
        max_steps=shape.steps,
        learning_rate=TRAIN["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=TRAIN["warmup_fraction"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=TRAIN["gradient_checkpointing"],
        seed=TRAIN["seed"],
        max_length=None if padding_free else shape.max_length,
        padding_free=padding_free,
        completion_only_loss=True,
        bf16=device == "cuda",
        use_cpu=device == "cpu",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )
    with PeakRSS() as mem:
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=dtype)
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()  # as ours: the training loop's peak, weights resident
        out = trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    num_tokens, seconds = logs[-1]["num_tokens"], out.metrics["train_runtime"]
    n_params = sum(p.numel() for p in trainer.model.parameters())
    return {
        "tokens_per_s": num_tokens / seconds,
        "peak_rss_bytes": mem.peak,
        "peak_rss_over_baseline_bytes": mem.peak - mem.baseline,
        "baseline_rss_bytes": mem.baseline,
        "peak_cuda_bytes": int(torch.cuda.max_memory_allocated()) if device == "cuda" else None,
        "final_train_loss": logs[-1]["loss"],
        "eval_loss": _held_out_loss(trainer.model, work, shape),
        "steps": trainer.state.global_step,
        "mfu": model_flops_utilization(n_params, num_tokens, seconds, _torch_device(device)),
    }


def _torch_device(name: str) -> Any:
    import torch

    return torch.device(name)


def _held_out_loss(model: Any, work: Path, shape: Shape) -> float:
    """The same scoring for every peer: token-weighted NLL of the held-out responses."""
    import pandas as pd

    from pipeline.chat_format import build_examples, load_tokenizer
    from pipeline.train.scoring import mean_token_loss, sequence_nll

    tok = load_tokenizer(str(work / "model"))
    eval_ex = build_examples(tok, pd.read_parquet(work / "eval.parquet"), shape.max_length)
    scores = sequence_nll(
        model,
        [(e.input_ids, e.labels) for e in eval_ex],
        pad_id=int(tok.pad_token_id),
        batch_size=shape.eval_batch_size,
        device=next(model.parameters()).device,
    )
    return mean_token_loss(scores)


def run_config(name: str, shape: Shape, work: Path, rounds: int, peers: list[str]) -> dict[str, Any]:
    """Alternating fresh-process runs of every peer; medians and ratios against each TRL peer."""
    work.mkdir(parents=True, exist_ok=True)
    prepare(work, shape)
    load_before = os.getloadavg()
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in peers}
    for i in range(rounds):
        for impl in peers[i % len(peers) :] + peers[: i % len(peers)]:
            cmd = [sys.executable, __file__, "--config", name, "--worker", impl, "--work", str(work)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{name}/{impl} run failed:\n{proc.stderr[-4000:]}")
            runs[impl].append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(f"{name} round {i} {impl}: {runs[impl][-1]}", flush=True)
    med = {impl: {k: _median(rs, k) for k in rs[0]} for impl, rs in runs.items()}
    mem_key = "peak_cuda_bytes" if med["ours"]["peak_cuda_bytes"] else "peak_rss_bytes"
    ratios = {
        peer: {
            "tokens_per_s": med["ours"]["tokens_per_s"] / med[peer]["tokens_per_s"],
            "peak_memory": med["ours"][mem_key] / med[peer][mem_key],
            "peak_rss": med["ours"]["peak_rss_bytes"] / med[peer]["peak_rss_bytes"],
            "peak_rss_over_baseline": med["ours"]["peak_rss_over_baseline_bytes"]
            / med[peer]["peak_rss_over_baseline_bytes"],
            "eval_loss_rel_diff": abs(med["ours"]["eval_loss"] - med[peer]["eval_loss"]) / med[peer]["eval_loss"],
            # Paired within each round (the two runs were seconds apart): robust to load changing between rounds.
            "tokens_per_s_per_round": [
                o["tokens_per_s"] / r["tokens_per_s"] for o, r in zip(runs["ours"], runs[peer], strict=True)
            ],
        }
        for peer in peers
        if peer != "ours"
    }
    return {
        "command": f"python bench/train_throughput.py --config {name} --rounds {rounds} --peers {' '.join(peers)}",
        "device": _device_name(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "shape": asdict(shape),
        "lora": LORA,
        "train": TRAIN,
        "memory_key": mem_key,
        "median": med,
        "ratios_ours_over": ratios,
        "runs": runs,
    }


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def write_results(configs: dict[str, Any]) -> str:
    """Merge into bench/results/train_throughput.json (one entry per configuration) and rewrite the markdown."""
    import platform

    import torch
    import transformers
    import trl

    path = RESULTS / "train_throughput.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    merged = {**old.get("configs", {}), **configs}
    report = {
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "python": platform.python_version(),
        "configs": {k: merged[k] for k in SHAPES if k in merged},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    md = [
        "# Training throughput and memory: our recipe vs TRL SFTTrainer + PEFT\n",
        f"torch {torch.__version__}, transformers {transformers.__version__}, TRL {trl.__version__}. "
        f"LoRA r={LORA['r']} all-linear, gradient checkpointing on for every peer, seed 0, medians of alternating "
        "fresh-process runs. Goal: >=1.5x TRL's tokens/s at <=0.7x its peak memory, held-out loss within 2%.\n",
    ]
    md += [_config_md(name, c) for name, c in report["configs"].items()]
    text = "\n".join(md)
    (RESULTS / "train_throughput.md").write_text(text)
    return text


def _config_md(name: str, c: dict[str, Any]) -> str:
    mib = 1024**2
    s, med, key = c["shape"], c["median"], c["memory_key"]
    vocab = s["vocab"] or "tokenizer's 1024"
    lines = [
        f"## {name}\n",
        f"`{c['command']}` on {c['device']}, load average {c['load_average_before_after'][0][0]:.2f} before / "
        f"{c['load_average_before_after'][1][0]:.2f} after. {s['arch']} random weights, hidden {s['hidden']}, "
        f"{s['layers']} layers, vocab {vocab}; {s['n_train']} pairs up to {s['max_length']} tokens (responses "
        f"{s['response_tokens'][0]}-{s['response_tokens'][1]} tokens log-uniform"
        + (
            f", a {s['context_tokens'][0]}-{s['context_tokens'][1]} token context on half the prompts"
            if s["context_tokens"]
            else ""
        )
        + f"); batch {s['batch_size']} x accum {s['grad_accum_steps']}, {s['steps']} steps.\n",
        "| | " + " | ".join(med) + " |",
        "|---|" + "---|" * len(med),
        "| non-pad tokens/s | " + " | ".join(f"{m['tokens_per_s']:.0f}" for m in med.values()) + " |",
    ]
    if key == "peak_cuda_bytes":
        lines.append("| peak CUDA allocated | " + " | ".join(f"{m[key] / mib:.0f} MiB" for m in med.values()) + " |")
        lines.append("| MFU (4·N·tokens) | " + " | ".join(f"{(m['mfu'] or 0) * 100:.1f}%" for m in med.values()) + " |")
    lines += [
        "| peak RSS | " + " | ".join(f"{m['peak_rss_bytes'] / mib:.0f} MiB" for m in med.values()) + " |",
        "| RSS before model load (baseline) | "
        + " | ".join(f"{m['baseline_rss_bytes'] / mib:.0f} MiB" for m in med.values())
        + " |",
        "| peak RSS above baseline | "
        + " | ".join(f"{m['peak_rss_over_baseline_bytes'] / mib:.0f} MiB" for m in med.values())
        + " |",
        "| held-out loss | " + " | ".join(f"{m['eval_loss']:.4f}" for m in med.values()) + " |",
        "| last train-step loss | " + " | ".join(f"{m['final_train_loss']:.4f}" for m in med.values()) + " |",
        "",
        "| ours / peer | tokens/s (per round) | peak memory | peak RSS | peak RSS above baseline | held-out loss apart |",
        "|---|---|---|---|---|---|",
    ]
    for peer, r in c["ratios_ours_over"].items():
        rounds = ", ".join(f"{x:.2f}" for x in r["tokens_per_s_per_round"])
        lines.append(
            f"| {peer} | {r['tokens_per_s']:.2f}x ({rounds}) | {r['peak_memory']:.2f}x | {r['peak_rss']:.2f}x | "
            f"{r['peak_rss_over_baseline']:.2f}x | {r['eval_loss_rel_diff'] * 100:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=list(SHAPES), nargs="+", default=["tiny", "realistic"])
    p.add_argument("--rounds", type=int, help="runs per peer (default: the configuration's)")
    p.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    p.add_argument("--work", type=Path, default=Path("/tmp/lora-pipeline-bench-train"))
    p.add_argument("--worker", choices=PEERS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if "ours" not in args.peers:
        p.error("--peers must include ours: every ratio is ours over a peer")
    if args.worker:
        shape = SHAPES[args.config[0]]
        if args.worker == "ours":
            result = worker_ours(args.work, shape)
        else:
            result = worker_trl(args.work, shape, padding_free=args.worker == "trl-padding-free")
        print("RESULT " + json.dumps(result), flush=True)
        return

    import torch

    needs_gpu = [c for c in args.config if SHAPES[c].needs_cuda]
    if needs_gpu and not torch.cuda.is_available():
        raise SystemExit(
            f"--config {' '.join(needs_gpu)} needs a CUDA device (the issue's comparison is on an H100) and torch "
            "sees none; on CPU run --config tiny realistic"
        )
    done = {}
    for name in args.config:
        shape = SHAPES[name]
        done[name] = run_config(name, shape, args.work / name, args.rounds or shape.rounds, args.peers)
    print(write_results(done))


if __name__ == "__main__":
    main()
