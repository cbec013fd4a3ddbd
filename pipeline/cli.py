"""The `lora-pipeline` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from pipeline.ingest.client import LabelStudioError
from pipeline.ingest.server import LabelStudioStartError
from pipeline.validate.reconcile import ReconciliationError


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from pipeline.demo.tiny_model import build_tiny_model

    out = build_tiny_model(args.dir, pretrain_steps=args.pretrain_steps, seed=args.seed)
    print(f"tiny model and tokenizer saved to {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline_flow import lora_pipeline_flow

    outcome = lora_pipeline_flow(config_path=args.config, work_dir=args.work_dir, base_model=args.base_model)
    print(outcome.reconciliation_table)
    print(f"MLflow run {outcome.run_id}")
    _print_metrics(outcome.metrics)
    print(f"promotion gate: {_verdict(outcome.gate_passed, outcome.registered_version)}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.chat_format import load_tokenizer
    from pipeline.validate.report import validation_summary
    from pipeline.validate.snapshot import load_snapshot
    from pipeline.validate.checks import chat_token_counter, validate_records

    snap = load_snapshot(args.snapshot)
    config = load_config(args.config, base_model=args.base_model)
    counter = None
    if not args.no_token_checks:
        try:
            counter = chat_token_counter(load_tokenizer(config.base_model))
        except OSError as e:
            raise ValueError(
                f"cannot load the tokenizer of base model {config.base_model!r} ({e.__class__.__name__}); "
                "pass --base-model DIR_OR_ID, or --no-token-checks to skip the token-length checks"
            ) from None
    if args.previous is not None:
        previous = load_snapshot(args.previous)
    else:
        # The newest sibling snapshot older than this one, as the flow would have compared.
        older = sorted(p for p in snap.path.parent.iterdir() if p.is_dir() and p.name < snap.path.name)
        previous = load_snapshot(older[-1]) if older and (older[-1] / "snapshot.json").is_file() else None
    result = validate_records(
        snap.records,
        snap.meta.get("categories"),
        config,
        token_counter=counter,
        previous=previous.records if previous is not None else None,
    )
    print(f"snapshot {snap.path} ({snap.hash[:12]})")
    if previous is not None:
        print(f"compared with previous snapshot {previous.path.name}")
    print(validation_summary(result))
    return 0 if result.quarantined.empty and not result.errors else 1


def _print_metrics(metrics: dict[str, float]) -> None:
    width = max((len(k) for k in metrics), default=0) + 2
    for k, v in sorted(metrics.items()):
        print(f"  {k:<{width}}{v:.4f}")


def _verdict(passed: bool, version: str | None) -> str:
    if passed:
        return f"PASS, registered as version {version}"
    return "FAIL, nothing registered (each rule's numbers: gate_report.md in the MLflow run)"


def _cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo.runner import run_demo

    out = run_demo(args.dir, port=args.port)
    print()
    print("=" * 72)
    print(out["reconciliation"])
    print(f"MLflow run:    {out['run_id']}")
    _print_metrics(out["metrics"])
    print(out["promotion"])
    print(f"adapter:       {out['adapter_dir']}")
    print(f"snapshot:      {out['snapshot_dir']}")
    print(f"open the UI:   {out['mlflow_ui']}  (then http://127.0.0.1:5000)")
    print(f"Label Studio login (the demo starts and stops its server): {out['labelstudio_credentials']}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.train.recipe import train_adapter
    from pipeline.train.results import StepLog
    from pipeline.train.data import load_training_data

    config = load_config(args.config, base_model=args.base_model)
    train_df, eval_df, dataset_hash = load_training_data(args.data, config, eval_path=args.eval_data)

    def show(log: StepLog) -> None:
        # One flushed line per step: the progress a wrapper (or the resume test) can follow.
        print(
            f"step {log.step} loss {log.loss:.6f} lr {log.learning_rate:.3e} tok/s {log.tokens_per_s:.0f}", flush=True
        )

    result = train_adapter(
        config, train_df, eval_df, args.out, dataset_hash=dataset_hash, on_step=show, resume=args.resume
    )
    if result.manifest.get("world_size", 1) == 1 or os.environ.get("RANK", "0") == "0":
        print(f"adapter saved to {result.adapter_dir} after {result.steps} steps (eval loss {result.eval_loss:.4f})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline.train.merge import export_merged

    out = export_merged(args.adapter, args.merged, base_model=args.base_model)
    print(f"merged model saved to {out}")
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

    val = sub.add_parser("validate", help="re-run the row and dataset checks on a snapshot and print a summary")
    val.add_argument("snapshot", type=Path)
    val.add_argument("--config", help="YAML config whose validation thresholds and policies apply (default: defaults)")
    val.add_argument("--base-model", help="tokenizer for the token-length checks (default: the config's base_model)")
    val.add_argument("--previous", type=Path, help="snapshot to check drift against (default: the previous sibling)")
    val.add_argument("--no-token-checks", action="store_true", help="skip the token-length checks (no tokenizer)")
    val.set_defaults(func=_cmd_validate)

    demo = sub.add_parser("demo", help="the whole pipeline offline on sample data and the tiny model")
    demo.add_argument("--dir", default=os.environ.get("DEMO_DIR", "demo-output"), type=Path)
    demo.add_argument("--port", type=int, default=0, help="Label Studio port (default: a free one)")
    demo.set_defaults(func=_cmd_demo)

    tr = sub.add_parser(
        "train", help="train an adapter from a snapshot dir or parquet file (also under torchrun / accelerate launch)"
    )
    tr.add_argument("data", type=Path, help="snapshot directory (split by its hash) or a parquet file of PairRecords")
    tr.add_argument("--out", type=Path, required=True, help="adapter directory; checkpoints go to OUT.checkpoints/")
    tr.add_argument("--eval-data", type=Path, help="held-out parquet (only with a parquet DATA)")
    tr.add_argument("--config", help="YAML config (default: built-in defaults)")
    tr.add_argument("--base-model", help="override base_model")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint, if any")
    tr.set_defaults(func=_cmd_train)

    ex = sub.add_parser("export", help="merge an adapter into a full-precision copy of its base and save it")
    ex.add_argument("adapter", type=Path)
    ex.add_argument("--merged", type=Path, required=True, help="output directory for the merged model")
    ex.add_argument("--base-model", help="override the base model recorded in the adapter's manifest")
    ex.set_defaults(func=_cmd_export)

    from pipeline.labelstudio.commands import add_labelstudio_parser

    add_labelstudio_parser(sub)
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
    except httpx.HTTPError as e:
        # A service kept failing after the client's retries (429, 5xx, resets): say so in one line.
        print(
            f"lora-pipeline: error: {type(e).__name__}: {e}; retries exhausted, run the command again", file=sys.stderr
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
