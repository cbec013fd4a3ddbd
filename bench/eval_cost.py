"""The whole assessment's cost vs training's, at the demo's settings on the demo base (issue 13: <= 0.3x).

Run (builds the demo base into --base-cache if missing, ~3 minutes; then a few minutes a round on 2 busy cores):
    .venv/bin/python bench/eval_cost.py --rounds 3 --threads 1
Writes bench/results/eval_cost.json and bench/results/eval_cost.md. Not run in CI (no timed tests).

Data and config are the demo's: pipeline/demo/demo.yaml on the demo base (pipeline/demo/demo_base.py, as
`lora-pipeline demo` builds it; `--base tiny` uses the tests' tiny model), the demo's 200 sample pairs written as a
snapshot (its frozen train/eval split, as the ingest flow writes it). In one process:
  champion  one adapter trained with train.seed + 1 and registered as `champion` in a local MLflow (sqlite), with
            its training keys, so that every assessment compares against a champion on the same base
  per round train_adapter on the snapshot's Arrow split (the train flow's input): its `wall_time_s` (MLflow
            `train_wall_time_s`, the training loop with its held-out scoring) is the denominator; then the whole
            assess_adapter(..., tracking_uri=<that MLflow>, train_records=...) as the flow calls it: load + guards,
            forgetting (lm-eval on the general suite, base and adapter), task evaluation (held-out loss base and
            adapter, greedy generations on every held-out row for base and adapter, bootstraps), champion
            comparison (download, training keys, its held-out loss and generations, bootstrap), leakage, gate
The assessment's parts are timed by wrapping the functions assess_adapter calls (no hooks inside the model).
Medians over rounds; lm-eval's one-off import is timed before the rounds (a flow run process pays it once).
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
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DISABLE_PANDERA_IMPORT_WARNING", "True")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from peft.tuners.lora import LoraLayer

import pipeline.evaluate.task_eval as task_eval
import pipeline.track.promotion as promotion
from pipeline.config import PipelineConfig, load_config
from pipeline.demo.demo_base import build_demo_base
from pipeline.demo.runner import DEMO_CONFIG
from pipeline.demo.sample_data import sample_records
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.evaluate.forgetting import load_verified_adapter
from pipeline.track.registry import CHAMPION, register_adapter
from pipeline.track.tracking import start_run
from pipeline.train.manifest import MANIFEST
from pipeline.train.recipe import train_adapter
from pipeline.validate.snapshot import Snapshot, write_snapshot

RESULTS = Path(__file__).resolve().parent / "results"
CHAMPION_ADAPTER = "champion_under_test"  # the name score_with_adapter gives the champion next to ours

# The assessment's parts: (label, module, function name) wrapped while assess_adapter runs. Nested parts are
# subtracted from their parents' "own" time in `_parts`.
WRAPPED = (
    ("load_and_guards", promotion, "load_verified_adapter"),
    ("forgetting", promotion, "forgetting_check"),
    ("task_eval", promotion, "evaluate_task"),
    ("champion", promotion, "compare_champion"),
    ("champion_fetch", promotion, "fetch_champion"),
    ("champion_training_keys", promotion, "training_keys_of"),
    ("champion_load", task_eval, "add_adapter"),
    ("tokenization", task_eval, "build_examples"),
    ("bootstrap", task_eval, "loss_improvement"),
    ("bootstrap", task_eval, "task_quality"),
    ("bootstrap", task_eval, "champion_quality"),
    ("gate", promotion, "evaluate_gate"),
)


def _side(model: torch.nn.Module) -> str:
    """Which weights a call runs with: base (adapters disabled), the champion, or the adapter under test."""
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    if layers and all(m.disable_adapters for m in layers):
        return "base"
    return "champion" if getattr(model, "active_adapter", None) == CHAMPION_ADAPTER else "adapter"


@contextmanager
def instrumented(acc: Counter[str], generated: Counter[str]) -> Iterator[None]:
    """Add each wrapped function's wall time to `acc[label]`; model calls by side (`score_<side>`,
    `generate_<side>`) and the tokens each side generated to `generated`."""

    def wrap(owner: Any, name: str, label: Any) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            key = label(args) if callable(label) else label
            t = time.perf_counter()
            try:
                out = original(*args, **kwargs)
            finally:
                acc[key] += time.perf_counter() - t
            if name == "greedy_generate":
                tok = args[1]
                generated[key] += sum(len(tok(o, add_special_tokens=False)["input_ids"]) for o in out)
            return out

        stack.callback(setattr, owner, name, original)
        setattr(owner, name, wrapper)

    with ExitStack() as stack:
        for label, owner, name in WRAPPED:
            wrap(owner, name, label)
        wrap(task_eval, "sequence_nll", lambda a: f"score_{_side(a[0])}")
        wrap(task_eval, "greedy_generate", lambda a: f"generate_{_side(a[0])}")
        yield


def _parts(acc: Counter[str], total: float) -> dict[str, float]:
    """Seconds by part, each counted once (champion scoring and generation out of `champion`, etc.)."""
    gen = {f"generation_{s}_s": acc[f"generate_{s}"] for s in ("base", "adapter", "champion")}
    loss = {f"task_loss_{s}_s": acc[f"score_{s}"] for s in ("base", "adapter", "champion")}
    champion_other = (
        acc["champion"]
        - acc["generate_champion"]
        - acc["score_champion"]
        - acc["champion_fetch"]
        - acc["champion_training_keys"]
        - acc["champion_load"]
    )
    parts = {
        "load_and_guards_s": acc["load_and_guards"],
        "forgetting_s": acc["forgetting"],
        **loss,
        **gen,
        "tokenization_s": acc["tokenization"],
        "bootstrap_s": acc["bootstrap"],
        "champion_fetch_s": acc["champion_fetch"],
        "champion_training_keys_s": acc["champion_training_keys"],
        "champion_load_s": acc["champion_load"],
        "champion_other_s": champion_other,
        "gate_s": acc["gate"],
    }
    parts["rest_s"] = total - sum(parts.values())
    return parts


def register_champion(
    config: PipelineConfig, snapshot: Snapshot, train_rows: Any, eval_rows: Any, work: Path, uri: str
) -> dict[str, Any]:
    """Train with train.seed + 1 and register that adapter as `champion` (with its training keys), as the flow's
    promotion would; the assessments then compare against it."""
    seed = config.train.seed + 1
    cfg = config.model_copy(update={"train": config.train.model_copy(update={"seed": seed})})
    result = train_adapter(cfg, train_rows, eval_rows, work / "champion", dataset_hash=snapshot.hash)
    run_id = start_run(uri, cfg, snapshot)
    promotion.log_training_keys(uri, run_id, snapshot.split()[0])
    model, tok = load_verified_adapter(cfg, result.adapter_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the base is a local path outside the model store: expected here
        version = register_adapter(
            uri,
            run_id,
            model,
            tok,
            name=cfg.gate.registered_model,
            alias=CHAMPION,
            base_model=cfg.base_model,
            manifest=json.loads((Path(result.adapter_dir) / MANIFEST).read_text()),
        )
    return {"seed": seed, "version": str(version.version), "train_wall_time_s": result.wall_time_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", choices=("demo", "tiny"), default="demo")
    ap.add_argument("--base-cache", type=Path, default=Path.home() / ".cache" / "lora-pipeline" / "demo-base")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--work", type=Path, default=Path("/tmp/eval-cost-bench"))
    # Training and assessment run with the same thread count; 1 keeps timings stable on shared cores.
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    args = ap.parse_args()
    load_at_start = os.getloadavg()
    torch.set_num_threads(max(1, args.threads))
    work = args.work / f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
    work.mkdir(parents=True)
    model_dir = build_demo_base(args.base_cache) if args.base == "demo" else build_tiny_model(work / "tiny-model")
    cfg = load_config(DEMO_CONFIG, base_model=str(model_dir))
    records = sample_records()
    snapshot = write_snapshot(
        records,
        records.iloc[:0],
        work / "snapshots",
        meta={"source": {"bench": "eval_cost"}},
        eval_fraction=cfg.data.eval_fraction,
        near_duplicate_threshold=cfg.validation.near_duplicate_threshold,
    )
    train_rows, eval_rows = snapshot.hf_split()  # what the train flow trains on
    train_df, eval_df = snapshot.split()  # what it assesses with
    uri = f"sqlite:///{work / 'mlflow.db'}"

    t = time.perf_counter()
    # lm_eval/__init__ is lazy: the evaluator and the HF model module are what the first check pays for.
    import lm_eval.evaluator
    import lm_eval.models.huggingface  # noqa: F401

    import_s = time.perf_counter() - t
    champion = register_champion(cfg, snapshot, train_rows, eval_rows, work, uri)
    print(json.dumps({"champion": champion}), flush=True)

    rounds = []
    for r in range(args.rounds):
        result = train_adapter(cfg, train_rows, eval_rows, work / f"adapter-{r}", dataset_hash=snapshot.hash)
        acc: Counter[str] = Counter()
        generated: Counter[str] = Counter()
        with instrumented(acc, generated):
            t = time.perf_counter()
            assessment = promotion.assess_adapter(
                cfg, result.adapter_dir, eval_df, tracking_uri=uri, train_records=train_df
            )
            assess_s = time.perf_counter() - t
        if assessment.champion_version != champion["version"]:
            raise RuntimeError(f"the champion was not compared: {assessment.champion_note}")
        m = assessment.metrics()
        rounds.append(
            {
                "train_wall_time_s": result.wall_time_s,
                "train_steps": result.steps,
                "assess_s": assess_s,
                "ratio": assess_s / result.wall_time_s,
                **_parts(acc, assess_s),
                **{f"generated_tokens_{k.removeprefix('generate_')}": float(v) for k, v in generated.items()},
                "task_loss_base": m["task_loss_base"],
                "task_loss_adapter": m["task_loss_adapter"],
                "champion_task_loss": m["champion_task_loss"],
                "rouge_l_base": m["task_rouge_l_base"],
                "rouge_l_adapter": m["task_rouge_l_adapter"],
                "champion_rouge_l": m["champion_rouge_l"],
                "gate_passed": float(assessment.verdict.passed),
            }
        )
        print(json.dumps(rounds[-1]), flush=True)
    write_results(args, cfg, champion, rounds, import_s, (len(train_df), len(eval_df)), model_dir, load_at_start)


def write_results(
    args: argparse.Namespace,
    cfg: PipelineConfig,
    champion: dict[str, Any],
    rounds: list[dict[str, float]],
    import_s: float,
    rows: tuple[int, int],
    model_dir: Path,
    load_at_start: tuple[float, float, float],
) -> None:
    """bench/results/eval_cost.json (every round) and eval_cost.md (medians, parts, the goal)."""
    n_train, n_eval = rows
    med = {k: statistics.median(x[k] for x in rounds) for k in rounds[0]}
    load = os.getloadavg()
    summary = {
        "command": f"python bench/eval_cost.py --base {args.base} --rounds {args.rounds} --threads {args.threads}",
        "base_model": args.base,
        "base_model_dir": str(model_dir),
        "config": DEMO_CONFIG.name,
        "demo_settings": {
            "lora": cfg.lora.model_dump(),
            "train": cfg.train.model_dump(),
            "eval": cfg.eval.model_dump(),
        },
        "rows": {"train": n_train, "eval": n_eval},
        "champion": champion,
        "lm_eval_import_s": import_s,
        "median": med,
        "ratio_including_import": (med["assess_s"] + import_s) / med["train_wall_time_s"],
        "rounds": rounds,
        "load_average_at_start": load_at_start,
        "load_average_at_end": load,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
        "torch": torch.__version__,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "eval_cost.json").write_text(json.dumps(summary, indent=2))
    lo, tr, ev = cfg.lora, cfg.train, cfg.eval
    total, train_s = med["assess_s"], med["train_wall_time_s"]
    part_keys = [k for k in rounds[0] if k.endswith("_s") and k not in ("train_wall_time_s", "assess_s")]
    md = [
        "# Assessment cost vs training (demo settings, demo base)",
        "",
        f"`{summary['command']}`",
        "",
        f"{args.base} base, `pipeline/demo/demo.yaml` (LoRA {lo.target_modules} r={lo.r}, LR {tr.learning_rate:g}, "
        f"{tr.epochs} epochs, batch {tr.batch_size}; eval batch {ev.batch_size}, max_new_tokens {ev.max_new_tokens}, "
        f"generations on all {n_eval} held-out rows), the demo's 200 sample pairs as a snapshot ({n_train} train / "
        f"{n_eval} eval rows). A champion (train.seed {champion['seed']}, version {champion['version']}) is "
        "registered first, so every assessment runs the champion comparison. Medians of "
        f"{args.rounds} rounds, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs shared with other "
        f"work (load average 1/5/15 min at the start {' '.join(f'{x:.2f}' for x in load_at_start)}, at the end "
        f"{' '.join(f'{x:.2f}' for x in load)}).",
        "",
        "| what | seconds | / training | share of the assessment |",
        "|---|---|---|---|",
        f"| training (`train_adapter` wall_time_s, {int(med['train_steps'])} steps) | {train_s:.2f} | 1.00 | |",
        f"| **whole `assess_adapter`** | **{total:.2f}** | **{total / train_s:.3f}** | 100% |",
        *(
            f"| - {k.removesuffix('_s').replace('_', ' ')} | {med[k]:.3f} | {med[k] / train_s:.3f} | "
            f"{med[k] / total:.0%} |"
            for k in part_keys
        ),
        f"| importing lm-eval (once per process, before the rounds) | {import_s:.2f} | {import_s / train_s:.3f} | |",
        "",
        "Each row is the median of its own rounds, so the parts need not add up to the whole exactly.",
        "",
        f"Goal: <= 0.3. Measured {total / train_s:.3f} ({summary['ratio_including_import']:.3f} with lm-eval's import). "
        "Per round: "
        + ", ".join(f"{x['ratio']:.3f}" for x in rounds)
        + ". Generated tokens per side (median): "
        + ", ".join(
            f"{s} {med[f'generated_tokens_{s}']:.0f}"
            for s in ("base", "adapter", "champion")
            if f"generated_tokens_{s}" in med
        )
        + f". Held-out loss base {med['task_loss_base']:.3f} -> adapter {med['task_loss_adapter']:.3f} "
        f"(champion {med['champion_task_loss']:.3f}); ROUGE-L base {med['rouge_l_base']:.3f} -> adapter "
        f"{med['rouge_l_adapter']:.3f} (champion {med['champion_rouge_l']:.3f}).",
        "",
        "Parts: load and guards = base + adapter load, manifest check and the adapter-applied probe; forgetting = "
        "`forgetting_check` (lm-eval, base and adapter, bootstraps); task loss = held-out `sequence_nll` per side; "
        "generation = `greedy_generate` per side; champion fetch / training keys / load = MLflow download, its "
        "training rows' keys, loading it next to ours; bootstrap = the task loss, ROUGE-L/exact-match and "
        "champion intervals; rest = side-by-side table, leakage, what is not wrapped.",
    ]
    (RESULTS / "eval_cost.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
