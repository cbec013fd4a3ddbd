"""`lora-pipeline promote` and `lora-pipeline rollback`: manual alias moves, with the gate's verdict shown."""

from __future__ import annotations

import argparse

CHAMPION = "champion"  # pipeline.track.registry.CHAMPION, without importing the registry (peft, torch) for --help


def _registered_model(args: argparse.Namespace) -> str:
    from pipeline.config import load_config

    return args.model or load_config(args.config).gate.registered_model


def _show(move: object) -> None:
    print(move.verdict)  # type: ignore[attr-defined]
    print()
    print(move.summary())  # type: ignore[attr-defined]


def _cmd_promote(args: argparse.Namespace) -> int:
    from pipeline.config import Settings
    from pipeline.track.manual_promotion import promote_run

    _show(
        promote_run(Settings().mlflow_tracking_uri, _registered_model(args), args.run_id, args.alias, force=args.force)
    )
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from pipeline.config import Settings
    from pipeline.track.manual_promotion import rollback

    _show(rollback(Settings().mlflow_tracking_uri, _registered_model(args), args.alias))
    return 0


def add_review_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `promote` and `rollback` (tracking server from $MLFLOW_TRACKING_URI)."""
    pr = sub.add_parser("promote", help="point a registry alias at a run's registered version (shows its verdict)")
    pr.add_argument("run_id", help="the MLflow run whose registered adapter version to promote")
    pr.add_argument("--alias", default=CHAMPION, help="the alias to move (default: champion)")
    pr.add_argument("--model", help="registered model name (default: gate.registered_model of --config)")
    pr.add_argument("--config", help="pipeline config YAML (for the registered model name)")
    pr.add_argument("--force", action="store_true", help="promote even though the run's gate did not pass")
    pr.set_defaults(func=_cmd_promote)

    rb = sub.add_parser("rollback", help="move a registry alias back to the version that held it before")
    rb.add_argument("--alias", default=CHAMPION, help="the alias to move back (default: champion)")
    rb.add_argument("--model", help="registered model name (default: gate.registered_model of --config)")
    rb.add_argument("--config", help="pipeline config YAML (for the registered model name)")
    rb.set_defaults(func=_cmd_rollback)
