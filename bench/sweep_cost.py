"""What a rank sweep costs next to one training run on the same snapshot (issue 13 goal: 5 ranks <= 5.5x).

Run (builds the tiny model into DIR if it lacks one; a few minutes on 2 busy cores):
    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep_cost.py --tiny-model /tmp/tiny --ranks 4 8 16 32 64
Writes bench/results/sweep.json and bench/results/sweep.md. Not run in CI (no timed tests).

Both sides do the same work per adapter, in this process, against a local SQLite MLflow store, on one snapshot of
the demo's sample pairs with pipeline/demo/demo.yaml's settings (rank aside), without Prefect (its fixed cost per
flow run is measured in bench/orchestration_overhead.py):
  single  one training run: its MLflow run, train_adapter, assess_adapter (forgetting, generations on every held-out
          row, gate), the same metrics, verdict and artifacts (pipeline.track.sweep.run_child of a one-config plan)
  sweep   open_sweep (parent + one nested run per rank), run_child per rank, read the points back, the trade-off
          report on the parent (pipeline.track.sweep, what flows/sweep_flow.py calls)
Each side gets its own empty tokenization cache, so each pays tokenizing once. A warm-up run (untimed) pays the
process's one-off imports first. The single run uses the config's own rank (demo: 16).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from pipeline.config import PipelineConfig, load_config
from pipeline.demo.runner import DEMO_CONFIG
from pipeline.demo.sample_data import sample_records
from pipeline.demo.tiny_model import build_tiny_model
from pipeline.track.sweep import finish_sweep, open_sweep, plan_children, read_point, run_child
from pipeline.validate.snapshot import Snapshot, write_snapshot

RESULTS = Path(__file__).resolve().parent / "results"


def _config(tiny: Path, cache: Path, experiment: str) -> PipelineConfig:
    return load_config(
        str(DEMO_CONFIG),
        base_model=str(tiny),
        data={"tokenize_cache_dir": str(cache)},
        mlflow={"experiment": experiment},
    )


def single_run(uri: str, config: PipelineConfig, snapshot: Snapshot, work: Path) -> dict[str, float]:
    """One training run: its MLflow run, training, assessment, logging."""
    start = time.perf_counter()
    specs = plan_children(config, [config.lora.r])
    from pipeline.track import tracking

    run_id = tracking.start_run(uri, specs[0].config, snapshot)
    point = run_child(uri, specs[0], snapshot, run_id, work / "adapter")
    assert point.status == "FINISHED", point.error
    return {"wall_s": time.perf_counter() - start, "train_s": point.train_wall_time_s}


def sweep(uri: str, config: PipelineConfig, snapshot: Snapshot, ranks: list[int], work: Path) -> dict[str, Any]:
    """The sweep as the flow runs it, children in this process."""
    start = time.perf_counter()
    specs = plan_children(config, ranks)
    runs = open_sweep(uri, config, snapshot, specs)
    for s in specs:
        run_child(uri, s, snapshot, runs.child_ids[s.label], work / s.label / "adapter")
    points = [read_point(uri, s, runs.child_ids[s.label], "") for s in specs]
    rec = finish_sweep(uri, runs.parent_id, points, work / "report")
    return {
        "wall_s": time.perf_counter() - start,
        "train_s": sum(p.train_wall_time_s for p in points),
        "children": [
            {
                "label": p.label,
                "status": p.status,
                "task_gain": p.task_gain,
                "forgetting_passed": p.forgetting_passed,
                "adapter_bytes": p.adapter_bytes,
                "train_s": p.train_wall_time_s,
            }
            for p in points
        ],
        "recommended": rec.point.label if rec.point else None,
        "reason": rec.reason,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny-model", type=Path, required=True, help="tiny model dir (built there if missing)")
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    ap.add_argument("--rows", type=int, default=200, help="sample pairs in the snapshot (demo: 200)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not (args.tiny_model / "config.json").is_file():
        build_tiny_model(args.tiny_model, pretrain_steps=300, seed=0)
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        records = sample_records(args.rows)
        snapshot = write_snapshot(records, records.iloc[:0], root / "snapshots", meta={"source": {"bench": "sweep"}})
        warm = _config(args.tiny_model, root / "cache-warm", "sweep-bench-warmup")
        warm = warm.model_copy(update={"train": warm.train.model_copy(update={"max_steps": 2})})
        single_run(uri, warm, snapshot, root / "warmup")
        one = single_run(uri, _config(args.tiny_model, root / "cache-single", "sweep-bench"), snapshot, root / "single")
        print(f"single run: {one['wall_s']:.1f} s (training {one['train_s']:.1f} s)", flush=True)
        many = sweep(uri, _config(args.tiny_model, root / "cache-sweep", "sweep-bench"), snapshot, args.ranks, root)
        print(f"sweep of {len(args.ranks)}: {many['wall_s']:.1f} s", flush=True)
    ratio = many["wall_s"] / one["wall_s"]
    result = {
        "ranks": args.ranks,
        "rows": args.rows,
        "config": "pipeline/demo/demo.yaml (rank swept; single run at its r)",
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "single": one,
        "sweep": many,
        "ratio": ratio,
        "ratio_per_adapter": ratio / len(args.ranks),
        "goal": 5.5,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(result, indent=2))
    (args.out / "sweep.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(r: dict[str, Any]) -> str:
    one, many = r["single"], r["sweep"]
    lines = [
        "# Rank sweep cost (bench/sweep_cost.py)",
        "",
        f"Tiny model, {r['rows']} sample pairs, {r['config']}, {r['threads']} thread(s), {r['cores']} cores "
        "(shared), one round, no Prefect.",
        "",
        "| run | wall s | of which training s |",
        "|---|---|---|",
        f"| one training run (train + assess + log) | {one['wall_s']:.1f} | {one['train_s']:.1f} |",
        f"| sweep of {len(r['ranks'])} ranks {r['ranks']} | {many['wall_s']:.1f} | {many['train_s']:.1f} |",
        "",
        f"**Ratio: {r['ratio']:.2f}x** one training run (goal <= {r['goal']}x); {r['ratio_per_adapter']:.2f}x per "
        "adapter.",
        "",
        "| child | status | task gain | forgetting rules | adapter bytes | train s |",
        "|---|---|---|---|---|---|",
    ]
    for c in many["children"]:
        lines.append(
            f"| {c['label']} | {c['status']} | {c['task_gain']:+.4f} | {'pass' if c['forgetting_passed'] else 'FAIL'} "
            f"| {c['adapter_bytes']} | {c['train_s']:.1f} |"
        )
    lines += ["", f"Recommended: {many['reason']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
