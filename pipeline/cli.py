"""The `lora-pipeline` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from flows.local_api import PrefectStartError
from pipeline.cli_orchestration import add_orchestration_parsers, add_webhook_parser
from pipeline.cli_review import add_review_parsers
from pipeline.cli_sweep import add_sweep_parser
from pipeline.ingest.client import LabelStudioError
from pipeline.ingest.reconcile import ReconciliationError
from pipeline.ingest.server import LabelStudioStartError, signals_exit

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from pipeline.config import PipelineConfig


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    from pipeline.demo.tiny_model import build_tiny_model

    out = build_tiny_model(args.dir, pretrain_steps=args.pretrain_steps, seed=args.seed)
    print(f"tiny model and tokenizer saved to {out}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.local_api import prefect_api

    with prefect_api():  # the run's own Prefect API unless PREFECT_API_URL names one; it dies with this process
        from flows.ingest_flow import ingest_flow

        outcome = ingest_flow(
            config_path=args.config,
            work_dir=args.work_dir,
            base_model=args.base_model,
            train_deployment=args.train_deployment,
            force=args.force,
        )
    print(outcome.reconciliation_table)
    print(f"snapshot {outcome.snapshot_dir}")
    if not outcome.trained:
        print(f"not training: {outcome.message}")
        return 0
    if outcome.train is None:
        print(f"training ran as flow run {outcome.train_flow_run_id} of {args.train_deployment}: {outcome.train_state}")
        return 0
    result = outcome.train
    if result.already_trained:
        print(f"already trained in MLflow run {result.run_id}")
        return 0
    print(f"MLflow run {result.run_id}{' (resumed)' if result.resumed else ''}")
    _print_metrics(result.metrics)
    print(f"promotion gate: {_verdict(result.gate_passed, result.registered_version)}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.validate.checks import chat_token_counter, validate_records
    from pipeline.validate.report import validation_summary
    from pipeline.validate.snapshot import load_snapshot

    snap = load_snapshot(args.snapshot)
    config = load_config(args.config, base_model=args.base_model)
    counter = None if args.no_token_checks else chat_token_counter(_tokenizer_or_error(config))
    if args.previous is not None:
        previous = load_snapshot(args.previous)
    else:
        # The newest sibling snapshot older than this one, as the flow would have compared.
        older = sorted(p for p in snap.path.parent.iterdir() if p.is_dir() and p.name < snap.path.name)
        previous = load_snapshot(older[-1]) if older and (older[-1] / "snapshot.json").is_file() else None
    result = validate_records(
        snap.pairs,
        snap.meta.get("categories"),
        config,
        token_counter=counter,
        previous=previous.pairs if previous is not None else None,
    )
    print(f"snapshot {snap.path} ({snap.hash[:12]})")
    if previous is not None:
        print(f"compared with previous snapshot {previous.path.name}")
    print(validation_summary(result))
    return 0 if result.quarantined.empty and not result.errors else 1


def _tokenizer_or_error(config: PipelineConfig) -> PreTrainedTokenizerBase:
    """The base model's tokenizer for the token-length checks, or a one-line error saying what to pass."""
    from pipeline.chat_format import load_tokenizer

    try:
        return load_tokenizer(config.base_model, trust_remote_code=config.model.trust_remote_code)
    except OSError as e:
        raise ValueError(
            f"cannot load the tokenizer of base model {config.base_model!r} ({e.__class__.__name__}); "
            "pass --base-model DIR_OR_ID, or --no-token-checks to skip the token-length checks"
        ) from None


def _print_metrics(metrics: dict[str, float]) -> None:
    """The run's metrics under the names the MLflow UI shows (pipeline/track/metric_names.py), by section."""
    from pipeline.track.metric_names import sectioned

    named = sectioned(metrics)
    width = max((len(k) for k in named), default=0) + 2
    for k, v in sorted(named.items()):
        print(f"  {k:<{width}}{v:.4f}")


def _verdict(passed: bool, version: str | None) -> str:
    if passed:
        return f"PASS, registered as version {version}"
    return "FAIL, nothing registered (each rule's numbers: gate_report.md in the MLflow run)"


def _cmd_demo(args: argparse.Namespace) -> int:
    # Threads: torch's default (one per core) trains the demo 1.4x faster on an idle 2-core machine but several
    # times slower beside one busy process (a fresh `make demo` beside another job crawled at 3 s/step). So
    # torch starts with one thread and training's governor (pipeline/train/cpu_threads.py) gives it the cores
    # the rest of the machine leaves idle, re-checked every few seconds. Set before torch is imported; an
    # OMP_NUM_THREADS of your own wins and turns the governor off.
    if "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
        os.environ.setdefault("LORA_PIPELINE_CPU_THREADS", "auto")  # pipeline.train.cpu_threads.ENV
    from pipeline.demo.runner import run_demo, use_demo_prefect_home

    use_demo_prefect_home(args.dir)
    from flows.local_api import prefect_api

    # `kill` (SIGTERM/SIGHUP) stops the demo's Label Studio and Prefect API too, not only this process.
    with signals_exit(), prefect_api():
        from flows.ingest_flow import ingest_flow

        out = run_demo(args.dir, port=args.port, run_flow=ingest_flow)
    print()
    print("=" * 72)
    print(out["reconciliation"])
    print(f"MLflow run:    {out['run_id']}")
    _print_metrics(out["metrics"])
    print(out["learning"])
    print(out["promotion"])
    print(f"adapter:       {out['adapter_dir']}")
    print(f"snapshot:      {out['snapshot_dir']}")
    print(f"open the UI:   {out['mlflow_ui']}  (then http://127.0.0.1:5000)")
    print(f"Label Studio login (the demo starts and stops its server): {out['labelstudio_credentials']}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.train.data import load_training_data
    from pipeline.train.recipe import train_adapter
    from pipeline.train.results import StepLog

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
        if args.result_json is not None:
            args.result_json.write_text(json.dumps(result.to_json_dict()))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.train.merge import export_merged

    loading = load_config(args.config).model
    out = export_merged(args.adapter, args.merged, base_model=args.base_model, loading=loading)
    print(f"merged model saved to {out}")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from pipeline.config import Settings, load_config
    from pipeline.ingest.client import connect, ensure_project, get_project, retry_policy
    from pipeline.ingest.project_setup import (
        import_prompts,
        project_has_feedback_panel,
        read_prompts,
        upgrade_project_config,
    )
    from pipeline.validate.feedback import ensure_views

    cfg = load_config(args.config).labelstudio
    rows = read_prompts(args.prompts) if args.prompts else []
    settings = Settings()
    client = connect(
        settings.label_studio_url,
        settings.require_label_studio_key(),
        timeout_s=cfg.timeout_s,
        policy=retry_policy(cfg),
    )
    if cfg.project_id is not None:
        project = get_project(client, cfg.project_id)
        missing = sorted(set(cfg.categories) - set(project.categories))
        if missing:
            raise ValueError(f"Label Studio project {project.id} lacks categories {missing} listed in the config")
    else:
        project = ensure_project(client, cfg.project_title, cfg.categories)
    print(f"Label Studio project {project.id} ({project.title!r}) ok; categories: {', '.join(project.categories)}")
    if args.upgrade_config:
        changed = upgrade_project_config(client, project.id)
        print("labeling config: feedback panel added" if changed else "labeling config: feedback panel present")
    elif not project_has_feedback_panel(client, project.id):
        print(
            "labeling config: no feedback panel, so annotators do not see why a task was flagged; "
            "add it with `lora-pipeline labelstudio init --upgrade-config` (annotations are kept)"
        )
    if cfg.feedback:
        ensure_views(client, project.id, cfg.feedback_view)  # a Default tab first, then the "needs fix" view
    if rows:
        summary = import_prompts(client, project.id, rows, with_drafts=args.drafts, model_version=args.model_version)
        print(
            f"imported {summary.imported} prompts ({summary.with_drafts} with model drafts as predictions); "
            f"{summary.already_present} were already in the project"
        )
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from pipeline.config import Settings, load_config
    from pipeline.ingest.export_file import pull_export_file
    from pipeline.ingest.pull import pull_project, pull_summary
    from pipeline.validate.feedback import feedback_for_snapshot
    from pipeline.validate.prepare import prepare_dataset
    from pipeline.validate.snapshot import previous_snapshot

    config = load_config(args.config, base_model=args.base_model)
    cfg = config.labelstudio
    snapshots = Path(args.work_dir) / "snapshots"
    # Loaded before pulling: a missing tokenizer should not cost a pull.
    tokenizer = None if args.no_token_checks else _tokenizer_or_error(config)
    if args.export_file:
        pull = pull_export_file(args.export_file, cfg)
    else:
        pull = pull_project(Settings(), cfg, snapshots_root=snapshots, full=args.full)
    # The same checks, thresholds, policies, split and drift baseline as the flow's validate_and_snapshot.
    prepared = prepare_dataset(
        pull, snapshots, config, previous_snapshot(snapshots), token_checks=tokenizer is not None, tokenizer=tokenizer
    )
    print(pull_summary(pull))
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
    init.add_argument(
        "--upgrade-config",
        action="store_true",
        help="add the feedback panel to an existing project's labeling config (display only; annotations are kept)",
    )
    init.set_defaults(func=_cmd_init)

    pull = ls_sub.add_parser("pull", help="pull (incrementally), validate, snapshot, print the reconciliation table")
    pull.add_argument("--config", help="YAML config")
    pull.add_argument("--work-dir", default="work", help="snapshots go to WORK_DIR/snapshots (default ./work)")
    pull.add_argument("--full", action="store_true", help="ignore the watermark and fetch every task")
    pull.add_argument("--export-file", type=Path, help="read a Label Studio JSON export file instead of the API")
    pull.add_argument("--no-feedback", action="store_true", help="do not mark failing tasks in Label Studio")
    pull.add_argument("--base-model", help="tokenizer for the token-length checks (default: the config's base_model)")
    pull.add_argument("--no-token-checks", action="store_true", help="skip the token-length checks (no tokenizer)")
    pull.set_defaults(func=_cmd_pull)
    add_webhook_parser(ls_sub)


def _cmd_export_dataset(args: argparse.Namespace) -> int:
    from pipeline.validate.dataset_export import export_dataset

    out = export_dataset(args.snapshot, args.format, args.out, push_to_hub=args.push_to_hub)
    print(f"snapshot {args.snapshot} exported as {args.format} to {out}")
    if args.push_to_hub:
        print(f"pushed to https://huggingface.co/datasets/{args.push_to_hub}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    import tempfile

    from pipeline.config import Settings, load_config
    from pipeline.serve.adapter_source import resolve_adapter
    from pipeline.serve.chat import answer, load_chat_model

    config = load_config(args.config)
    ref = args.adapter or f"models:/{config.gate.registered_model}@champion"
    with tempfile.TemporaryDirectory(prefix="lora-chat-") as tmp:
        source = resolve_adapter(ref, tracking_uri=Settings().mlflow_tracking_uri, dest=tmp)
        chat = load_chat_model(source, base_only=args.base, device=args.device, loading=config.model)
        print(f"[{chat.label}]", file=sys.stderr)

        def ask(prompt: str) -> None:
            answer(
                chat,
                prompt,
                system=args.system,
                max_new_tokens=args.max_new_tokens,
                on_text=lambda s: print(s, end="", flush=True),
            )
            print(flush=True)

        if args.prompt is not None:
            ask(args.prompt)
            return 0
        print("type a question; an empty line or Ctrl-D ends the chat", file=sys.stderr)
        while True:
            try:
                prompt = input("> ")
            except EOFError:
                return 0
            if not prompt.strip():
                return 0
            ask(prompt)


def _cmd_serve(args: argparse.Namespace) -> int:
    from pipeline.serve.cli_serve import serve_from_args

    return serve_from_args(args)


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
    run.add_argument("--work-dir", help="snapshots and adapters go here (default $LORA_PIPELINE_WORK_DIR, else ./work)")
    run.add_argument("--base-model", help="override base_model: a hub id or a local directory")
    run.add_argument("--force", action="store_true", help="train even when no annotation changed")
    run.add_argument(
        "--train-deployment",
        help="start training as a run of this Prefect deployment (e.g. lora-train/gpu) instead of in this process",
    )
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
    tr.add_argument("--result-json", type=Path, help="write the training result here as JSON (rank 0)")
    tr.set_defaults(func=_cmd_train)

    ex = sub.add_parser("export", help="merge an adapter into a full-precision copy of its base and save it")
    ex.add_argument("adapter", type=Path)
    ex.add_argument("--merged", type=Path, required=True, help="output directory for the merged model")
    ex.add_argument("--base-model", help="override the base model recorded in the adapter's manifest")
    ex.add_argument("--config", help="YAML config whose model: section says how weights may be loaded (default: safe)")
    ex.set_defaults(func=_cmd_export)

    exd = sub.add_parser(
        "export-dataset", help="write a snapshot's train/eval pairs for other tools (hf, chat-jsonl, sharegpt, alpaca)"
    )
    exd.add_argument("snapshot", type=Path, help="snapshot directory")
    exd.add_argument(
        "--format",
        required=True,
        choices=["hf", "chat-jsonl", "sharegpt", "alpaca"],
        help="hf: datasets.load_from_disk; chat-jsonl: {'messages': [...]} (TRL, axolotl); sharegpt; alpaca",
    )
    exd.add_argument("out", type=Path, help="new output directory")
    exd.add_argument("--push-to-hub", metavar="REPO", help="also push the DatasetDict (private) with $HF_TOKEN")
    exd.set_defaults(func=_cmd_export_dataset)

    chat = sub.add_parser("chat", help="talk to an adapter (a directory or models:/NAME@ALIAS), or to its base")
    chat.add_argument(
        "--adapter", help="adapter directory or models:/NAME@ALIAS|/VERSION (default: the config's model @champion)"
    )
    chat.add_argument("--prompt", help="answer this one prompt and exit (default: interactive)")
    chat.add_argument("--system", help="system message, as in the training data")
    chat.add_argument("--base", action="store_true", help="answer with the adapter's base model alone, to compare")
    chat.add_argument("--max-new-tokens", type=int, default=128)
    chat.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    chat.add_argument(
        "--config", help="YAML config (the registered model name for the default adapter; model: loading permissions)"
    )
    chat.set_defaults(func=_cmd_chat)

    from pipeline.serve.cli_serve import add_serve_arguments

    serve = sub.add_parser("serve", help="OpenAI-compatible server: one base, many registry adapters, hot-swapped")
    add_serve_arguments(serve)
    serve.set_defaults(func=_cmd_serve)

    add_labelstudio_parser(sub)
    add_orchestration_parsers(sub)
    add_review_parsers(sub)
    add_sweep_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `lora-pipeline` console script."""
    args = build_parser().parse_args(argv)
    from pipeline.library_noise import silence_library_noise

    silence_library_noise()
    try:
        # Credentials in LABEL_STUDIO_URL / MLFLOW_TRACKING_URI leave the URLs (and this process's environment)
        # before any command, Prefect or MLflow can see or store them.
        from pipeline.config import Settings

        Settings()
        return int(args.func(args))
    except (
        ValueError,
        FileNotFoundError,
        LabelStudioError,
        LabelStudioStartError,
        PrefectStartError,
        ReconciliationError,
    ) as e:
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
