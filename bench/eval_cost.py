"""Forgetting-check cost vs training cost at the demo's settings (issue 5: eval must cost <= 15% of training).

Run (builds the tiny model if DIR lacks one; a few minutes on 2 busy cores):
    .venv/bin/python bench/eval_cost.py --tiny-model demo-output/tiny-model --rounds 5 --threads 1
Writes bench/results/eval_cost.json and bench/results/eval_cost.md. Not run in CI (no timed tests).

In one process, per round, one after another on the same data:
  train      train_adapter with pipeline/data/demo.yaml on the demo's 200 sample pairs (held-out split as the flow)
  harness    forgetting_check as the flow runs it: lm-eval with our "lora-pipeline" backend on the loaded
             PeftModel, built-in suite, base inside disable_adapter() then adapter, plus the paired bootstraps
  stock      the same check with lm-eval's stock `hf` backend (HFLM), the reference (eval.backend: hf)
  peer       the in-house batched scorer (pipeline.evaluate.score_suite) on the same suite, base + adapter:
             the same work without lm-eval's request building and metrics
The one-off import of lm-eval's evaluator and HF model modules is timed separately (paid once per process, not per adapter).
Medians over rounds are reported, because 2-core machines shared with other work are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pipeline.config import load_config
from pipeline.demo import DEMO_CONFIG
from pipeline.evaluate import forgetting_check, load_verified_adapter, score_suite
from pipeline.formatting import build_examples
from pipeline.general_suite import load_general_suite
from pipeline.modeling import load_tokenizer
from pipeline.sample_data import sample_records
from pipeline.split import split_train_eval
from pipeline.tiny_model import build_tiny_model
from pipeline.train import train_adapter

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny-model", default="demo-output/tiny-model")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", default="/tmp/eval-cost-bench")
    # Training and evaluation run with the same thread count; 1 keeps timings stable on shared cores.
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    tiny = Path(args.tiny_model)
    if not (tiny / "config.json").is_file():
        build_tiny_model(tiny)
    torch.set_num_threads(max(1, args.threads))
    cfg = load_config(DEMO_CONFIG, base_model=str(tiny))
    records = sample_records()
    train_df, eval_df = split_train_eval(records, cfg.data.eval_fraction, "0" * 64)

    t = time.perf_counter()
    # lm_eval/__init__ is lazy: the evaluator and the HF model module are what the first check pays for.
    import lm_eval.evaluator
    import lm_eval.models.huggingface  # noqa: F401

    import_s = time.perf_counter() - t
    suite = load_general_suite()
    # Compute floor: forward tokens the check scores (both sides) vs forward+backward (~3x) tokens trained.
    tok = load_tokenizer(str(tiny))
    eval_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in suite.texts) + sum(
        len(tok(f"Question: {m.question}\nAnswer: {c}", add_special_tokens=False)["input_ids"])
        for m in suite.mc_items
        for c in m.choices
    )
    train_tokens = cfg.train.epochs * sum(len(e.input_ids) for e in build_examples(tok, train_df, cfg.data.max_length))
    token_ratio = (2 * eval_tokens) / (3 * train_tokens)
    rounds = []
    for r in range(args.rounds):
        t = time.perf_counter()
        result = train_adapter(cfg, train_df, eval_df, Path(args.work) / f"adapter-{r}")
        train_total = time.perf_counter() - t
        model, tok = load_verified_adapter(cfg, result.adapter_dir)
        t = time.perf_counter()
        report = forgetting_check(model, tok, cfg)
        harness_s = time.perf_counter() - t
        stock_cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"backend": "hf"})})
        t = time.perf_counter()
        stock = forgetting_check(model, tok, stock_cfg)
        stock_s = time.perf_counter() - t
        t = time.perf_counter()
        with model.disable_adapter():
            score_suite(model, tok, suite, batch_size=cfg.eval.batch_size)
        score_suite(model, tok, suite, batch_size=cfg.eval.batch_size)
        peer_s = time.perf_counter() - t
        mc, stock_mc = report.comparison("general_suite_mc"), stock.comparison("general_suite_mc")
        assert mc.adapter.values == stock_mc.adapter.values, "backends disagree on per-item accuracy"
        rounds.append(
            {
                "train_loop_s": result.wall_time_s,
                "train_total_s": train_total,
                "train_steps": result.steps,
                "forgetting_harness_s": harness_s,
                "forgetting_stock_hf_s": stock_s,
                "forgetting_peer_s": peer_s,
                "ratio_harness_to_train_loop": harness_s / result.wall_time_s,
                "ratio_stock_hf_to_train_loop": stock_s / result.wall_time_s,
                "ratio_peer_to_train_loop": peer_s / result.wall_time_s,
                "mc_acc_base": mc.base.value,
                "mc_acc_adapter": mc.adapter.value,
                "ppl_change_high": report.comparison("general_suite_ppl").delta.high,
            }
        )
        print(json.dumps(rounds[-1]))

    def med(key: str) -> float:
        return statistics.median(x[key] for x in rounds)

    summary = {
        "config": str(DEMO_CONFIG.name),
        "demo_settings": {
            "lora": cfg.lora.model_dump(),
            "train": cfg.train.model_dump(),
            "eval": cfg.eval.model_dump(),
        },
        "load_average": os.getloadavg(),
        "train_rows": len(train_df),
        "suite": {"mc_items": len(suite.mc_items), "texts": len(suite.texts)},
        "lm_eval_import_s": import_s,
        "eval_tokens_per_side": eval_tokens,
        "train_tokens_processed": train_tokens,
        "compute_ratio_estimate": token_ratio,
        "median": {k: med(k) for k in rounds[0]},
        "rounds": rounds,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "torch": torch.__version__,
    }
    m = summary["median"]
    summary["ratio_harness_including_import"] = (m["forgetting_harness_s"] + import_s) / m["train_loop_s"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_cost.json").write_text(json.dumps(summary, indent=2))
    lo, tr = cfg.lora, cfg.train
    md = [
        "# Forgetting-check cost vs training (demo settings)",
        "",
        f"`{sys.executable.split('/')[-1]} bench/eval_cost.py --rounds {args.rounds} --threads {args.threads}` — "
        f"tiny model, `pipeline/data/demo.yaml` (LoRA {lo.target_modules} r={lo.r}, LR {tr.learning_rate:g}, "
        f"{tr.epochs} epochs, eval batch {cfg.eval.batch_size}), {len(train_df)} training rows, built-in suite "
        f"({len(suite.mc_items)} multiple-choice items x 4 choices + {len(suite.texts)} texts), base + adapter. "
        f"Medians of {args.rounds} rounds, {args.threads} torch thread(s), {os.cpu_count()} CPUs shared with other "
        f"work (load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}).",
        "",
        "| what | seconds | / training loop |",
        "|---|---|---|",
        f"| training loop ({int(m['train_steps'])} steps) | {m['train_loop_s']:.2f} | 1.00 |",
        f"| forgetting check, lm-eval + our `lora-pipeline` backend (both sides + bootstrap; the flow's) | "
        f"{m['forgetting_harness_s']:.3f} | {m['ratio_harness_to_train_loop']:.3f} |",
        f"| same, lm-eval's stock `hf` backend (reference) | {m['forgetting_stock_hf_s']:.3f} | "
        f"{m['ratio_stock_hf_to_train_loop']:.3f} |",
        f"| same suite, in-house batched scorer without lm-eval | {m['forgetting_peer_s']:.3f} | "
        f"{m['ratio_peer_to_train_loop']:.3f} |",
        f"| importing lm-eval's evaluator + HF model (once per process) | {import_s:.2f} | {import_s / m['train_loop_s']:.2f} |",
        f"| compute floor: 2 x {eval_tokens} scored tokens vs 3 x {train_tokens} trained tokens | - | "
        f"{token_ratio:.3f} |",
        "",
        f"Target: <= 0.15. lm-eval ratio {m['ratio_harness_to_train_loop']:.3f} "
        f"({summary['ratio_harness_including_import']:.3f} with the import). Adapter: MC accuracy "
        f"{m['mc_acc_base']:.3f} -> {m['mc_acc_adapter']:.3f}, perplexity change upper bound {m['ppl_change_high']:+.2%}.",
    ]
    (RESULTS / "eval_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
