"""`lora-pipeline sweep`: train and assess one adapter per (rank, learning rate, targets) on one snapshot, log the
trade-off to a parent MLflow run and recommend a config (flows/sweep_flow.py, docs/sweep.md)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _cmd_sweep(args: argparse.Namespace) -> int:
    from flows.local_api import prefect_api

    with prefect_api():  # the run's own Prefect API unless PREFECT_API_URL names one; it dies with this process
        from flows.sweep_flow import sweep_flow

        outcome = sweep_flow(
            snapshot_dir=str(args.snapshot),
            ranks=args.ranks,
            learning_rates=args.lrs,
            targets=args.targets,
            alpha=args.alpha,
            config_path=args.config,
            base_model=args.base_model,
            work_dir=args.work_dir,
            child_deployment=args.child_deployment,
        )
    print(f"sweep parent run {outcome.parent_run_id}")
    for p in outcome.points:
        if p["status"] == "FAILED":
            print(f"  {p['label']:<20} FAILED  {p['error'][:160]}  (run {p['run_id']})")
            continue
        gain, low, high = p["task_gain"], p["task_gain_low"], p["task_gain_high"]
        forgetting = "pass" if p["forgetting_passed"] else "FAIL"
        star = "  <- recommended" if p["run_id"] == outcome.recommended_run_id else ""
        print(
            f"  {p['label']:<20} gain {gain:+.4f} [{_f(low)}, {_f(high)}]  forgetting {forgetting}  "
            f"{p['adapter_bytes']:>10} B  {p['train_wall_time_s']:.1f} s  (run {p['run_id']}){star}"
        )
    print(f"recommended: {outcome.reason}")
    print(f"trade-off table and Pareto plot: parent run artifacts sweep/ (also {outcome.report_dir})")
    return 0


def _f(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else "n/a"


def add_sweep_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `sweep` (tracking server from $MLFLOW_TRACKING_URI)."""
    sw = sub.add_parser(
        "sweep", help="one adapter per rank (x learning rate x targets) on a snapshot; trade-off + recommendation"
    )
    sw.add_argument("snapshot", type=Path, help="snapshot directory (its frozen train/eval split is used as is)")
    sw.add_argument("--ranks", type=int, nargs="+", required=True, help="LoRA ranks, e.g. 4 8 16 32 64")
    sw.add_argument("--lrs", type=float, nargs="+", help="learning rates (default: the config's train.learning_rate)")
    sw.add_argument(
        "--targets",
        nargs="+",
        help="target modules per child: a preset (qv, all-linear) or a comma list (q_proj,v_proj); "
        "default: the config's lora.target_modules",
    )
    sw.add_argument(
        "--alpha",
        choices=["scale", "fixed"],
        default="scale",
        help="scale: keep the config's alpha/r at every rank (default); fixed: the config's alpha for every rank",
    )
    sw.add_argument("--config", help="YAML config (epochs, eval and gate settings; default: built-in defaults)")
    sw.add_argument("--base-model", help="override base_model: a hub id or a local directory")
    sw.add_argument("--work-dir", help="adapters go to WORK_DIR/sweeps/<parent run>/ (default $LORA_PIPELINE_WORK_DIR)")
    sw.add_argument(
        "--child-deployment",
        help="run each child as a run of this Prefect deployment (e.g. lora-sweep-child/gpu) instead of in this process",
    )
    sw.set_defaults(func=_cmd_sweep)
