"""CLI commands that set up orchestration: `deploy`, `worker`, `webhook-receiver` and `labelstudio webhook`."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

SECRET_ENV = "LORA_PIPELINE_WEBHOOK_SECRET"


def _webhook_secret() -> str:
    """The shared secret of the receiver and the webhook, checked (empty, placeholder, not header-safe)."""
    from pipeline.ingest.webhooks import check_secret

    return check_secret(os.environ.get(SECRET_ENV, ""))


def _cmd_deploy(args: argparse.Namespace) -> int:
    from flows.deploy import default_gpu_slots, deploy

    slots = args.gpu_slots if args.gpu_slots is not None else default_gpu_slots()
    for pool in deploy(args.prefect_file, slots):
        limit = "no limit" if pool.concurrency_limit is None else f"concurrency limit {pool.concurrency_limit}"
        print(f"work pool {pool.name}: {'created' if pool.created else 'exists'}, {limit}")
    print(f"registered the deployments in {args.prefect_file} (prefect deployment ls lists them)")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from flows.worker import run_worker

    extra = [a for a in args.prefect_args if a != "--"]
    if args.name:
        extra += ["--name", args.name]
    if args.limit is not None:
        extra += ["--limit", str(args.limit)]
    if args.with_healthcheck:
        extra.append("--with-healthcheck")
    return run_worker(args.pool, extra, warm=not args.cold)


def _cmd_webhook_receiver(args: argparse.Namespace) -> int:
    from flows.webhook_receiver import serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(args.host, args.port, _webhook_secret(), quiet_s=args.quiet_s, max_wait_s=args.max_wait_s)
    return 0


def _cmd_register_webhook(args: argparse.Namespace) -> int:
    from pipeline.config import Settings, resolve_config
    from pipeline.ingest.client import LabelStudioError, connect, find_project, get_project, retry_policy
    from pipeline.ingest.webhooks import register_webhook

    cfg = resolve_config(args.config).labelstudio  # the config the flows use
    settings = Settings()
    client = connect(
        settings.label_studio_url,
        settings.require_label_studio_key(),
        timeout_s=cfg.timeout_s,
        policy=retry_policy(cfg),
    )
    project = (
        get_project(client, cfg.project_id) if cfg.project_id is not None else find_project(client, cfg.project_title)
    )
    if project is None:
        raise LabelStudioError(
            f"no Label Studio project is titled {cfg.project_title!r}; create it with `lora-pipeline labelstudio init`"
        )
    hook = register_webhook(client, project.id, args.url, _webhook_secret())
    print(
        f"Label Studio project {project.id} ({project.title}) sends annotation changes to {args.url} (webhook {hook})"
    )
    return 0


def add_orchestration_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `deploy`, `worker` and `webhook-receiver`."""
    dep = sub.add_parser("deploy", help="create work pools cpu/gpu and register prefect.yaml's deployments")
    dep.add_argument("--prefect-file", type=Path, default=Path("prefect.yaml"), help="default ./prefect.yaml")
    dep.add_argument("--gpu-slots", type=int, help="GPUs serving pool gpu = its concurrency limit (default: visible)")
    dep.set_defaults(func=_cmd_deploy)

    work = sub.add_parser(
        "worker",
        help="Prefect process worker for a pool, forking flow runs from a warm process (docs/orchestration.md)",
    )
    work.add_argument("--pool", required=True, help="work pool to serve (cpu or gpu)")
    work.add_argument("--name", help="worker name (default: Prefect's)")
    work.add_argument("--limit", type=int, help="flow runs at once on this worker")
    work.add_argument("--with-healthcheck", action="store_true", help="serve GET /health (Prefect's)")
    work.add_argument("--cold", action="store_true", help="no warm process: every flow run starts a fresh interpreter")
    work.add_argument("prefect_args", nargs=argparse.REMAINDER, help="after --: more `prefect worker start` options")
    work.set_defaults(func=_cmd_worker)

    rec = sub.add_parser(
        "webhook-receiver", help=f"turn Label Studio webhooks into Prefect events (secret: ${SECRET_ENV})"
    )
    rec.add_argument("--host", default="127.0.0.1")
    rec.add_argument("--port", type=int, default=8765)
    rec.add_argument("--quiet-s", type=float, default=600.0, help="emit this long after a project's last change")
    rec.add_argument("--max-wait-s", type=float, default=1800.0, help="but no later than this after its first")
    rec.set_defaults(func=_cmd_webhook_receiver)


def add_webhook_parser(ls_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `labelstudio webhook`."""
    hook = ls_sub.add_parser("webhook", help="make the project send annotation changes to the webhook receiver")
    hook.add_argument("--url", required=True, help="the receiver's URL as Label Studio reaches it, .../label-studio")
    hook.add_argument("--config", help="YAML config naming the project (default: $LORA_PIPELINE_CONFIG, else defaults)")
    hook.set_defaults(func=_cmd_register_webhook)
