"""`lora-pipeline labelstudio init|pull`: project bootstrap and a pull that prints the reconciliation table."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_init(args: argparse.Namespace) -> int:
    from pipeline.config import Settings, load_config
    from pipeline.http_retry import RetryPolicy
    from pipeline.labelstudio.bootstrap import import_prompts, read_prompts
    from pipeline.labelstudio.client import connect, ensure_project, get_project

    cfg = load_config(args.config).labelstudio
    rows = read_prompts(args.prompts) if args.prompts else []
    settings = Settings()
    client = connect(
        settings.label_studio_url,
        settings.require_label_studio_key(),
        timeout_s=cfg.timeout_s,
        policy=RetryPolicy(retries=cfg.retries, backoff_s=cfg.backoff_s),
    )
    if cfg.project_id is not None:
        project = get_project(client, cfg.project_id)
        missing = sorted(set(cfg.categories) - set(project.categories))
        if missing:
            raise ValueError(f"Label Studio project {project.id} lacks categories {missing} listed in the config")
    else:
        project = ensure_project(client, cfg.project_title, cfg.categories)
    print(f"Label Studio project {project.id} ({project.title!r}) ok; categories: {', '.join(project.categories)}")
    if rows:
        summary = import_prompts(client, project.id, rows, with_drafts=args.drafts, model_version=args.model_version)
        print(
            f"imported {summary.imported} prompts ({summary.with_drafts} with model drafts as predictions); "
            f"{summary.already_present} were already in the project"
        )
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from pipeline.config import Settings, load_config
    from pipeline.export_file import pull_export_file
    from pipeline.feedback import feedback_for_snapshot
    from pipeline.ingest import prepare_dataset, pull_project

    cfg = load_config(args.config).labelstudio
    snapshots = Path(args.work_dir) / "snapshots"
    if args.export_file:
        pull = pull_export_file(args.export_file, cfg)
    else:
        pull = pull_project(Settings(), cfg, snapshots_root=snapshots, full=args.full)
    # Without a tokenizer the token-length check is skipped; `lora-pipeline run` applies it.
    prepared = prepare_dataset(pull, snapshots)
    src = pull.source
    print(f"{src.get('mode', 'file')} pull of {src.get('url') or src.get('path')} project {pull.project.id}")
    if src.get("mode") == "incremental":
        reused = pull.normalized.tasks_seen - src["tasks_normalized"]
        drafts = f" ({src['tasks_drafts_changed']} only in their drafts)" if src.get("tasks_drafts_changed") else ""
        print(
            f"{src['tasks_changed']} tasks changed{drafts}, {src['tasks_deleted']} deleted, "
            f"{reused} reused from the last pull"
        )
    print(prepared.reconciliation.table())
    print(f"snapshot: {prepared.snapshot.path}")
    if args.export_file is None and cfg.feedback and not args.no_feedback:
        fb = feedback_for_snapshot(Settings(), cfg, pull.project.id, prepared.snapshot.path)
        print(
            f"feedback: {fb.marked} tasks marked, {fb.unchanged} unchanged, {fb.cleared} cleared "
            f"(view {cfg.feedback_view!r})"
        )
    return 0


def add_labelstudio_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `labelstudio init` and `labelstudio pull`."""
    ls = sub.add_parser("labelstudio", help="create/verify the Label Studio project, import prompts, pull")
    ls_sub = ls.add_subparsers(dest="labelstudio_command", required=True)

    init = ls_sub.add_parser("init", help="create or verify the project; import prompts (JSONL/CSV)")
    init.add_argument("--config", help="YAML config (project title/id and categories)")
    init.add_argument("--prompts", type=Path, help=".jsonl or .csv with a 'prompt' column (system/context optional)")
    init.add_argument(
        "--drafts", action="store_true", help="import the rows' 'response'/'category' as predictions to edit"
    )
    init.add_argument("--model-version", default="draft", help="model_version of the imported predictions")
    init.set_defaults(func=_cmd_init)

    pull = ls_sub.add_parser("pull", help="pull (incrementally), validate, snapshot, print the reconciliation table")
    pull.add_argument("--config", help="YAML config")
    pull.add_argument("--work-dir", default="work", help="snapshots go to WORK_DIR/snapshots (default ./work)")
    pull.add_argument("--full", action="store_true", help="ignore the watermark and fetch every task")
    pull.add_argument("--export-file", type=Path, help="read a Label Studio JSON export file instead of the API")
    pull.add_argument("--no-feedback", action="store_true", help="do not mark failing tasks in Label Studio")
    pull.set_defaults(func=_cmd_pull)
