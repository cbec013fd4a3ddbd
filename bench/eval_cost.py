"""Forgetting-check cost vs training cost at the demo's settings (issue 5: eval must cost <= 15% of training).

Run (builds the tiny model if DIR lacks one; a few minutes on 2 busy cores):
    .venv/bin/python bench/eval_cost.py --tiny-model demo-output/tiny-model --rounds 5 --threads 1
Writes bench/results/eval_cost.json and bench/results/eval_cost.md. Not run in CI (no timed tests).

In one process, per round, one after another on the same data:
  train      train_adapter with pipeline/demo/demo.yaml on the demo's 200 sample pairs (held-out split as the flow)
  harness    forgetting_check as the flow runs it: lm-eval with our "lora-pipeline" backend on the loaded
             PeftModel, built-in suite, base inside disable_adapter() then adapter, plus the paired bootstraps
  stock      the same check with lm-eval's stock `hf` backend (HFLM), the reference (eval.backend: hf)
  peer       the in-house batched scorer (pipeline.evaluate.forgetting.score_suite) on the same suite, base + adapter:
             the same work without lm-eval's request building and metrics
The one-off import of lm-eval's evaluator and HF model modules is timed separately (paid once per process, not per adapter).
Medians over rounds are reported, because 2-core machines shared with other work are noisy; the first round (the
first check in the process, as in a flow run) is reported too. The denominator is train_adapter's `wall_time_s`
(logged as `train_wall_time_s`: the training loop including its held-out scoring).
After the timed rounds, one more check runs instrumented (wall-clock timers around the model forward, the
backend's tokenization, lm-eval's evaluate and task loading) for a breakdown of where the check's time goes.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import pipeline.evaluate.forgetting as evaluate_module
import pipeline.evaluate.harness as harness
from pipeline.chat_format import build_examples, load_tokenizer
from pipeline.config import load_config
from pipeline.demo.runner import DEMO_CONFIG
from pipeline.demo.sample_data import sample_records
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.evaluate.forgetting import forgetting_check, load_verified_adapter, score_suite
from pipeline.evaluate.general_suite import load_general_suite
from pipeline.evaluate.lm_eval_backend import PipelineLM
from pipeline.train.recipe import train_adapter
from pipeline.validate.split import split_train_eval

RESULTS = Path(__file__).resolve().parent / "results"


@contextmanager
def _timed(owner: Any, name: str, label: str, acc: Counter[str]) -> Iterator[None]:
    """Add the wall time of every call to `owner.name` to `acc[label]` while inside."""
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            acc[label] += time.perf_counter() - t

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _breakdown(check: Callable[[], object], model: torch.nn.Module) -> dict[str, float]:
    """Seconds of one instrumented check by part: model forward, tokenization, lm-eval's own work, task loading."""
    import lm_eval.evaluator

    acc: Counter[str] = Counter()
    started: list[float] = []

    def before(*_: object) -> None:
        started.append(time.perf_counter())

    def after(*_: object) -> None:
        # Forwards of the adapter-applied probe are counted under probe_s, not here.
        acc["model_forward_s" if not acc["in_probe"] else "probe_forward_s"] += time.perf_counter() - started.pop()

    probe = evaluate_module.assert_adapter_applied

    def timed_probe(*args: Any, **kwargs: Any) -> Any:
        acc["in_probe"], t = 1, time.perf_counter()
        try:
            return probe(*args, **kwargs)
        finally:
            acc["in_probe"], acc["probe_s"] = 0, acc["probe_s"] + time.perf_counter() - t

    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    evaluate_module.assert_adapter_applied = timed_probe
    try:
        with (
            _timed(lm_eval.evaluator, "evaluate", "lm_eval_evaluate_s", acc),
            _timed(PipelineLM, "loglikelihood", "backend_s", acc),
            _timed(PipelineLM, "loglikelihood_rolling", "backend_s", acc),
            _timed(PipelineLM, "_encode_many", "tokenization_s", acc),
            _timed(harness, "load_tasks", "task_loading_s", acc),
        ):
            t = time.perf_counter()
            check()
            total = time.perf_counter() - t
    finally:
        evaluate_module.assert_adapter_applied = probe
        for h in hooks:
            h.remove()
    return {
        "total_s": total,
        "model_forward_s": acc["model_forward_s"],
        "backend_other_s": acc["backend_s"] - acc["model_forward_s"] - acc["tokenization_s"],
        "tokenization_s": acc["tokenization_s"],
        "lm_eval_own_s": acc["lm_eval_evaluate_s"] - acc["backend_s"],
        "task_loading_s": acc["task_loading_s"],
        "adapter_applied_probe_s": acc["probe_s"],
        "rest_s": total - acc["lm_eval_evaluate_s"] - acc["task_loading_s"] - acc["probe_s"],
    }


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
    train_df, eval_df = split_train_eval(records, cfg.data.eval_fraction)

    t = time.perf_counter()
    # lm_eval/__init__ is lazy: the evaluator and the HF model module are what the first check pays for.
    import lm_eval.evaluator
    import lm_eval.models.huggingface  # noqa: F401

    import_s = time.perf_counter() - t
    suite = load_general_suite()
    # Token ratio: forward tokens the check runs (both sides) vs forward+backward (~3x) tokens trained.
    tok = load_tokenizer(str(tiny))
    # Tokens the backend forwards per side: each text once, each question once with its choices after it.
    eval_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in suite.texts) + sum(
        len(tok(f"Question: {m.question}\nAnswer:", add_special_tokens=False)["input_ids"])
        + sum(len(tok(f" {c}", add_special_tokens=False)["input_ids"]) for c in m.choices)
        for m in suite.mc_items
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

    breakdown = _breakdown(lambda: forgetting_check(model, tok, cfg), model)
    print(json.dumps({"breakdown": breakdown}))

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
        "first_round": rounds[0],
        "breakdown_one_check": breakdown,
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
        f"tiny model, `pipeline/demo/demo.yaml` (LoRA {lo.target_modules} r={lo.r}, LR {tr.learning_rate:g}, "
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
        f"| token ratio: 2 x {eval_tokens} forwarded tokens vs 3 x {train_tokens} trained tokens | - | "
        f"{token_ratio:.3f} |",
        "",
        f"First round (the first check in the process, as in a flow run): {rounds[0]['forgetting_harness_s']:.3f} s, "
        f"{rounds[0]['ratio_harness_to_train_loop']:.3f} of its training loop. Denominator: `train_adapter`'s "
        "`wall_time_s` (MLflow `train_wall_time_s`, the loop including its held-out scoring).",
        "",
        "One instrumented check (`lora-pipeline`), where the time goes:",
        "",
        "| part | seconds | share |",
        "|---|---|---|",
        *(
            f"| {k.removesuffix('_s').replace('_', ' ')} | {v:.3f} | {v / breakdown['total_s']:.0%} |"
            for k, v in breakdown.items()
            if k != "total_s"
        ),
        f"| total | {breakdown['total_s']:.3f} | 100% |",
        "",
        f"Target: <= 0.15. lm-eval ratio {m['ratio_harness_to_train_loop']:.3f} "
        f"({summary['ratio_harness_including_import']:.3f} with the import). Adapter: MC accuracy "
        f"{m['mc_acc_base']:.3f} -> {m['mc_acc_adapter']:.3f}, perplexity change upper bound {m['ppl_change_high']:+.2%}.",
    ]
    (RESULTS / "eval_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
