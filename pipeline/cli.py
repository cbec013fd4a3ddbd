"""The `lora-pipeline` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.labelstudio.client import LabelStudioError
from pipeline.labelstudio.server import LabelStudioStartError
from pipeline.reconcile import ReconciliationError


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from pipeline.tiny_model import build_tiny_model

    out = build_tiny_model(args.dir, pretrain_steps=args.pretrain_steps, seed=args.seed)
    print(f"tiny model and tokenizer saved to {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline_flow import lora_pipeline_flow

    outcome = lora_pipeline_flow(config_path=args.config, work_dir=args.work_dir, base_model=args.base_model)
    print(outcome.reconciliation_table)
    print(f"MLflow run {outcome.run_id}")
    for k, v in sorted(outcome.metrics.items()):
        print(f"  {k:<28}{v:.4f}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.snapshot import load_snapshot
    from pipeline.validate import validate_records

    snap = load_snapshot(args.snapshot)
    categories = snap.meta.get("categories")
    result = validate_records(snap.records, categories)
    print(f"snapshot {snap.path} ({snap.hash[:12]}): {len(snap.records)} rows checked")
    print(f"  passed       {len(result.valid)}")
    print(f"  quarantined  {result.quarantined['task_id'].nunique()}")
    for check, n in result.quarantined.drop_duplicates(["task_id", "check"])["check"].value_counts().items():
        print(f"    {check:<32}{n}")
    return 0 if result.quarantined.empty else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import run_demo

    out = run_demo(args.dir, port=args.port)
    print()
    print("=" * 72)
    print(out["reconciliation"])
    print(f"MLflow run:    {out['run_id']}")
    for k, v in sorted(out["metrics"].items()):
        print(f"  {k:<28}{v:.4f}")
    print(f"adapter:       {out['adapter_dir']}")
    print(f"snapshot:      {out['snapshot_dir']}")
    print(f"open the UI:   {out['mlflow_ui']}  (then http://127.0.0.1:5000)")
    print(f"Label Studio login (the demo starts and stops its server): {out['labelstudio_credentials']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    p = argparse.ArgumentParser(prog="lora-pipeline", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    tm = sub.add_parser("tiny-model", help="build the offline tiny base model + tokenizer into DIR")
    tm.add_argument("dir", type=Path)
    tm.add_argument("--pretrain-steps", type=int, default=300, help="general-text pretraining steps (default 300)")
    tm.add_argument("--seed", type=int, default=0)
    tm.set_defaults(func=_cmd_tiny_model)

    run = sub.add_parser("run", help="run the whole flow against $LABEL_STUDIO_URL and $MLFLOW_TRACKING_URI")
    run.add_argument("--config", help="YAML config (default: built-in defaults, see configs/default.yaml)")
    run.add_argument("--work-dir", default="work", help="snapshots and adapters go here (default ./work)")
    run.add_argument("--base-model", help="override base_model: a hub id or a local directory")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser("validate", help="re-run the row checks on a snapshot directory and print a summary")
    val.add_argument("snapshot", type=Path)
    val.set_defaults(func=_cmd_validate)

    demo = sub.add_parser("demo", help="the whole pipeline offline on sample data and the tiny model")
    demo.add_argument("--dir", default=os.environ.get("DEMO_DIR", "demo-output"), type=Path)
    demo.add_argument("--port", type=int, default=0, help="Label Studio port (default: a free one)")
    demo.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lora-pipeline` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, FileNotFoundError, LabelStudioError, LabelStudioStartError, ReconciliationError) as e:
        # Bad input and unreachable services: one line that says what to fix, no traceback.
        print(f"lora-pipeline: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
