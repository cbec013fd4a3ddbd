"""Training throughput: our recipe vs TRL's SFTTrainer + PEFT, side by side, same work.

Run:  .venv/bin/python bench/train_throughput.py            (CPU here; CUDA when present)
Needs the `bench` extra (TRL):  pip install -e '.[bench]'

Same tiny Llama-style model (random weights, built offline), same pairs with widely varied lengths,
same LoRA config, effective batch, steps, LR schedule and seed. Each run is a fresh subprocess (so
its peak memory is its own), runs alternate (ours, TRL, TRL, ours, ...) to spread machine noise,
and we report medians. Tokens/s counts non-pad input tokens over the training loop's time (TRL: its
own `num_tokens` / `train_runtime`). The final loss compared is the held-out loss of each trained
adapter, scored by the same function on the same examples (train-step losses depend on data order).
Results go to bench/results/train_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

LORA = {"r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": "all-linear"}
# Gradient checkpointing on for both: it is TRL's SFTConfig default, and the comparison must be the same work.
TRAIN = {
    "learning_rate": 1e-3,
    "batch_size": 8,
    "grad_accum_steps": 2,
    "warmup_fraction": 0.1,
    "seed": 0,
    "gradient_checkpointing": True,
}
MAX_LENGTH = 512


class PeakRSS:
    """Samples this process's RSS every 5 ms in a thread (CPU peak memory without allocator hooks)."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()
        self.peak = self.proc.memory_info().rss
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


def prepare(work: Path, hidden: int, layers: int, n_train: int, n_eval: int) -> None:
    """Tiny random-weight model + pairs whose lengths vary ~15x (responses repeated 1..8 times)."""
    import random

    from pipeline.tiny_model import build_tiny_model
    from tests.conftest import make_records

    build_tiny_model(work / "model", hidden_size=hidden, num_layers=layers, num_heads=8, pretrain_steps=0)
    records = make_records(n_train + n_eval, seed=1)
    rng = random.Random(0)
    records["response"] = [" ".join([r] * rng.choice([1, 1, 1, 2, 2, 3, 4, 6, 8])) for r in records["response"]]
    records.iloc[:n_train].to_parquet(work / "train.parquet")
    records.iloc[n_train:].to_parquet(work / "eval.parquet")


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def worker_ours(work: Path, steps: int) -> dict[str, Any]:
    import pandas as pd

    from pipeline.config import load_config
    from pipeline.train import train_adapter

    train_df, eval_df = pd.read_parquet(work / "train.parquet"), pd.read_parquet(work / "eval.parquet")
    cfg = load_config(
        base_model=str(work / "model"),
        data={"max_length": MAX_LENGTH},
        lora=LORA,
        train={**TRAIN, "epochs": 100, "max_steps": steps, "device": _device()},
    )
    with PeakRSS() as mem:
        baseline = mem.proc.memory_info().rss
        result = train_adapter(cfg, train_df, eval_df, work / f"ours-{os.getpid()}")
    return {
        "tokens_per_s": result.tokens_per_s,
        "peak_rss_bytes": mem.peak,
        "peak_rss_over_baseline_bytes": mem.peak - baseline,
        "peak_cuda_bytes": result.peak_memory_bytes if _device() == "cuda" else None,
        "final_train_loss": result.final_loss,
        "eval_loss": result.eval_loss,
        "steps": result.steps,
        "padding_fraction": statistics.mean(h.padding_fraction for h in result.history),
        "mfu": result.mfu,
    }


def worker_trl(work: Path, steps: int) -> dict[str, Any]:
    import pandas as pd
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from pipeline.formatting import build_examples
    from pipeline.modeling import load_tokenizer
    from pipeline.scoring import mean_token_loss, sequence_nll

    train_df, eval_df = pd.read_parquet(work / "train.parquet"), pd.read_parquet(work / "eval.parquet")
    # TRL's conversational prompt-completion format: chat template applied, loss on the completion only.
    ds = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": p}], "completion": [{"role": "assistant", "content": r}]}
            for p, r in zip(train_df["prompt"], train_df["response"], strict=True)
        ]
    )
    device = _device()
    tok = load_tokenizer(str(work / "model"))
    args = SFTConfig(
        output_dir=str(work / f"trl-{os.getpid()}"),
        per_device_train_batch_size=TRAIN["batch_size"],
        gradient_accumulation_steps=TRAIN["grad_accum_steps"],
        max_steps=steps,
        learning_rate=TRAIN["learning_rate"],
        lr_scheduler_type="cosine",
        warmup_steps=TRAIN["warmup_fraction"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        gradient_checkpointing=TRAIN["gradient_checkpointing"],
        seed=TRAIN["seed"],
        max_length=MAX_LENGTH,
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
        baseline = mem.proc.memory_info().rss
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(str(work / "model"), dtype=dtype)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config)
        out = trainer.train()
        logs = [h for h in trainer.state.log_history if "loss" in h]
        num_tokens = logs[-1]["num_tokens"]
        eval_ex = build_examples(tok, eval_df, MAX_LENGTH)
        scores = sequence_nll(
            trainer.model,
            [(e.input_ids, e.labels) for e in eval_ex],
            pad_id=int(tok.pad_token_id),
            batch_size=16,
            device=trainer.model.device,
        )
    return {
        "tokens_per_s": num_tokens / out.metrics["train_runtime"],
        "peak_rss_bytes": mem.peak,
        "peak_rss_over_baseline_bytes": mem.peak - baseline,
        "peak_cuda_bytes": int(torch.cuda.max_memory_allocated()) if device == "cuda" else None,
        "final_train_loss": logs[-1]["loss"],
        "eval_loss": mean_token_loss(scores),
        "steps": trainer.state.global_step,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="runs per implementation (alternating)")
    p.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--work", type=Path, default=Path("/tmp/lora-pipeline-bench-train"))
    p.add_argument("--worker", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        fn = worker_ours if args.worker == "ours" else worker_trl
        print("RESULT " + json.dumps(fn(args.work, args.steps)), flush=True)
        return

    args.work.mkdir(parents=True, exist_ok=True)
    prepare(args.work, args.hidden, args.layers, n_train=256, n_eval=32)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trl": []}
    for i in range(args.rounds):
        for impl in ("ours", "trl") if i % 2 == 0 else ("trl", "ours"):
            cmd = [sys.executable, __file__, "--worker", impl, "--work", str(args.work), "--steps", str(args.steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not lines:
                raise SystemExit(f"{impl} run failed:\n{proc.stderr[-4000:]}")
            runs[impl].append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(f"round {i} {impl}: {runs[impl][-1]}", flush=True)
    write_results(args, runs)


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def write_results(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]]) -> None:
    import platform

    import torch
    import transformers
    import trl

    med = {impl: {k: _median(rs, k) for k in rs[0]} for impl, rs in runs.items()}
    mem_key = "peak_cuda_bytes" if med["ours"]["peak_cuda_bytes"] else "peak_rss_bytes"
    ratios = {
        "tokens_per_s": med["ours"]["tokens_per_s"] / med["trl"]["tokens_per_s"],
        "peak_memory": med["ours"][mem_key] / med["trl"][mem_key],
        "peak_rss_over_baseline": med["ours"]["peak_rss_over_baseline_bytes"]
        / med["trl"]["peak_rss_over_baseline_bytes"],
        "eval_loss_rel_diff": abs(med["ours"]["eval_loss"] - med["trl"]["eval_loss"]) / med["trl"]["eval_loss"],
    }
    report = {
        "command": "python bench/train_throughput.py " + f"--rounds {args.rounds} --steps {args.steps} "
        f"--hidden {args.hidden} --layers {args.layers}",
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "python": platform.python_version(),
        "setup": {"lora": LORA, "train": TRAIN, "max_length": MAX_LENGTH, "steps": args.steps},
        "median": med,
        "ratios_ours_over_trl": ratios,
        "runs": runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_throughput.json").write_text(json.dumps(report, indent=2))
    mib = 1024**2
    o, t = med["ours"], med["trl"]
    md = f"""# Training throughput: our recipe vs TRL SFTTrainer + PEFT

`{report["command"]}` on {report["device"]}; torch {torch.__version__}, transformers {transformers.__version__},
TRL {trl.__version__}. Tiny Llama-style model (hidden {args.hidden}, {args.layers} layers, random weights), 256 pairs
with lengths varied ~15x, LoRA r={LORA["r"]} all-linear, batch {TRAIN["batch_size"]} x accum {TRAIN["grad_accum_steps"]},
{args.steps} steps, seed 0; {args.rounds} alternating fresh-process runs each, medians.

| | ours | TRL | ours / TRL |
|---|---|---|---|
| non-pad tokens/s | {o["tokens_per_s"]:.0f} | {t["tokens_per_s"]:.0f} | {ratios["tokens_per_s"]:.2f}x |
| peak memory ({mem_key}) | {o[mem_key] / mib:.0f} MiB | {t[mem_key] / mib:.0f} MiB | {ratios["peak_memory"]:.2f}x |
| peak RSS above pre-model baseline | {o["peak_rss_over_baseline_bytes"] / mib:.0f} MiB | {t["peak_rss_over_baseline_bytes"] / mib:.0f} MiB | {ratios["peak_rss_over_baseline"]:.2f}x |
| held-out loss after training | {o["eval_loss"]:.4f} | {t["eval_loss"]:.4f} | {ratios["eval_loss_rel_diff"] * 100:.1f}% apart |
| last train-step loss | {o["final_train_loss"]:.4f} | {t["final_train_loss"]:.4f} | |
| padding fraction (ours) | {o["padding_fraction"]:.3f} | | |

Goal: >=1.5x tokens/s at <=0.7x peak memory, held-out loss within 2%.
"""
    (RESULTS / "train_throughput.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
