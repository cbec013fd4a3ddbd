"""`make demo`: a local Label Studio with annotated sample tasks, then the whole flow on the tiny model."""

from __future__ import annotations

import json
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from label_studio_sdk import LabelStudio

from pipeline.base_model import MODEL_STORE_ENV
from pipeline.config import load_config
from pipeline.demo.claims import claim_lines, demo_metrics, side_by_side_lines
from pipeline.demo.demo_base import build_demo_base
from pipeline.demo.sample_data import demo_pairs, sample_pairs
from pipeline.ingest.client import (
    ProjectRef,
    connect,
    ensure_project,
    import_tasks,
    iter_tasks,
    skip_task,
    submit_annotation,
)
from pipeline.ingest.server import LocalLabelStudio
from pipeline.track.registry import CANDIDATE, CHAMPION, get_alias
from pipeline.track.store import tracking_client

DEMO_CONFIG = Path(__file__).parent / "demo.yaml"

# `flows.ingest_flow.ingest_flow`, called with config_path, work_dir, base_model and force (training in process).
FlowRunner = Callable[..., Any]

# Annotation mistakes the demo makes on purpose so that the validation report has something to show.
_FLAWED = {
    7: lambda r: r + "  ",  # trailing whitespace
    23: lambda r: " " + r,  # leading whitespace
    41: lambda r: "   ",  # whitespace only
}
_SKIPPED = (11, 57, 93)  # annotator pressed Skip
_UNANNOTATED = (5, 150)  # nobody got to these yet
_RELABELED = (3, 64)  # annotated twice: the later annotation wins


@dataclass(frozen=True)
class SeedSummary:
    """What seeding did to the demo project."""

    project: ProjectRef
    imported: int
    annotated: int


def seed_project(client: LabelStudio, title: str, categories: tuple[str, ...], n: int | None = None) -> SeedSummary:
    """Create the demo project, import the demo's prompts (`demo_pairs()`: every route's fares and times asked
    three ways, plus other desk questions; `n`: the first `n` sample pairs instead, a smaller seeding for tests)
    and annotate them as an annotator would (once). The same positions are flawed, skipped or left alone."""
    project = ensure_project(client, title, categories)
    if any(True for _ in iter_tasks(client, project.id, page_size=1)):
        return SeedSummary(project=project, imported=0, annotated=0)
    pairs = demo_pairs() if n is None else sample_pairs(n)
    task_ids = import_tasks(client, project.id, [{"prompt": p["prompt"]} for p in pairs])
    annotated = 0
    for i, (task_id, pair) in enumerate(zip(task_ids, pairs, strict=True)):
        if i in _UNANNOTATED:
            continue
        if i in _SKIPPED:
            skip_task(client, task_id)
            continue
        response = _FLAWED.get(i, lambda r: r)(pair["response"])
        if i in _RELABELED:
            submit_annotation(client, task_id, "An early draft answer.", pair["category"])
        submit_annotation(client, task_id, response, pair["category"])
        annotated += 1
    return SeedSummary(project=project, imported=len(task_ids), annotated=annotated)


def _credentials(path: Path) -> dict[str, str]:
    """Demo Label Studio login, kept across runs (mode 0600) so the UI login stays the same."""
    if path.is_file():
        return json.loads(path.read_text())
    creds = {"username": "demo@example.com", "password": secrets.token_urlsafe(12), "token": secrets.token_hex(20)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(creds))
    return creds


def promotion_summary(
    tracking_uri: str,
    model_name: str,
    metrics: dict[str, float],
    registered_version: str | None,
    adapter_dir: str | None = None,
) -> str:
    """What the gate decided and where the registry's adapters are now (model name, version, alias); when the
    gate refused the adapter, how to talk to it anyway (`adapter_dir`)."""
    failed = sorted(
        k[len("gate_") : -len("_passed")]
        for k, v in metrics.items()
        if k.startswith("gate_") and k.endswith("_passed") and k != "gate_passed" and v == 0.0
    )
    lines = []
    if registered_version is not None:
        version = tracking_client(tracking_uri).get_model_version(model_name, registered_version)
        aliases = ", ".join(f"`{a}`" for a in version.aliases) or "none"
        lines.append(f"promotion gate: PASS; registered {model_name} version {version.version}, alias {aliases}")
        lines += [f"  load it with:  models:/{model_name}@{a}" for a in version.aliases]
        if version.aliases:
            chat = Path(sys.executable).parent / "lora-pipeline"
            store = os.environ.get(MODEL_STORE_ENV)
            env = f"MLFLOW_TRACKING_URI={tracking_uri}" + (f" {MODEL_STORE_ENV}={store}" if store else "")
            lines.append(
                f"  talk to it:    {env} {chat} chat "
                f"--adapter models:/{model_name}@{version.aliases[0]} [--prompt '...'] [--base]"
            )
    else:
        lines.append(f"promotion gate: FAIL ({', '.join(failed)}); this run registered nothing (rules: gate_report.md)")
        if "beats_champion" in failed:
            lines.append(
                f"  this run's held-out loss {metrics['task_loss_adapter']:.4f} does not beat the champion's "
                f"{metrics['champion_task_loss']:.4f} on the same split (a re-run on unchanged data trains the "
                "same adapter, and a tie is not an improvement)"
            )
        if adapter_dir is not None:
            chat = Path(sys.executable).parent / "lora-pipeline"
            lines.append(
                f"  talk to this run's adapter anyway:  {chat} chat --adapter {adapter_dir} [--prompt '...'] [--base]"
            )
    holders = {alias: get_alias(tracking_uri, model_name, alias) for alias in (CHAMPION, CANDIDATE)}
    for alias, holder in holders.items():
        if holder is not None and str(holder.version) != str(registered_version):
            lines.append(f"registry: {model_name}@{alias} is version {holder.version} (run {holder.run_id}), unchanged")
    if registered_version is None and not any(holders.values()):
        lines.append(f"registry: no version of {model_name} carries the `{CHAMPION}` or `{CANDIDATE}` alias")
    return "\n".join(lines)


def learning_report(
    tracking_uri: str, run_id: str, metrics: dict[str, float], scratch: Path, suite_dir: str | None = None
) -> str:
    """The demo's claims (loss, ROUGE-L, facts, general suite `suite_dir`: the config's `eval.general_suite`)
    and three answers side by side; the claim figures are also logged to the MLflow run as `demo/...` metrics."""
    client = tracking_client(tracking_uri)
    path = client.download_artifacts(run_id, "evaluation/side_by_side_table.json", str(scratch))
    raw = json.loads(Path(path).read_text())
    table = [dict(zip(raw["columns"], row, strict=True)) for row in raw["data"]]
    demo = demo_metrics(metrics, table, suite_dir)
    for key, value in demo.items():
        if value == value and value != float("inf"):  # MLflow refuses NaN/inf
            client.log_metric(run_id, key, value)
    lines = ["what the adapter learned (held-out questions, never trained on):"]
    lines += claim_lines(metrics, demo)
    lines.append("three held-out questions, base vs adapter:")
    lines += side_by_side_lines(table)
    return "\n".join(lines)


def use_demo_prefect_home(demo_dir: str | Path) -> None:
    """Keep Prefect's embedded API database with the rest of the demo, unless the user chose a home.

    Call before importing Prefect: it reads its settings on import.
    """
    root = Path(demo_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)  # Prefect creates its home on import, not its parents
    os.environ.setdefault("PREFECT_HOME", str(root / "prefect"))
    # The first start of Prefect's ephemeral API server migrates a new database: on 2 busy cores that
    # takes longer than Prefect's 20 s default, and the demo would fail before its flow starts.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def run_demo(demo_dir: str | Path, *, run_flow: FlowRunner, port: int = 0) -> dict[str, Any]:
    """Run the whole pipeline offline under `demo_dir` with `run_flow` (the Prefect flow, passed in by the
    CLI so that no stage package imports `flows/`); returns what the CLI prints."""
    root = Path(demo_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    use_demo_prefect_home(root)
    # Cached by a hash of its build settings: a second demo loads it instead of pretraining again.
    print(f"demo base model: {root / 'cache'} (built once, pretrained on general English)")
    model_dir = build_demo_base(root / "cache")
    # The demo's cache is its model store: the registry records the base as `model-store:demo-base-...`, so a
    # copied demo directory still opens (docs/model_store.md), instead of an absolute path with a warning.
    os.environ.setdefault(MODEL_STORE_ENV, str(root / "cache"))
    config = load_config(DEMO_CONFIG, base_model=str(model_dir))
    creds = _credentials(root / "labelstudio" / "credentials.json")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    print("starting Label Studio (the first start runs migrations, about a minute) ...")
    with LocalLabelStudio(
        data_dir=root / "labelstudio",
        port=port,
        username=creds["username"],
        password=creds["password"],
        token=creds["token"],
    ) as server:
        os.environ["LABEL_STUDIO_URL"] = server.url
        os.environ["LABEL_STUDIO_API_KEY"] = server.token
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        client = connect(server.url, server.token)
        seeded = seed_project(client, config.labelstudio.project_title, config.labelstudio.categories)
        print(
            f"Label Studio project {seeded.project.id}: imported {seeded.imported} tasks, "
            f"submitted {seeded.annotated} annotations"
        )
        # force: a second `make demo` trains again and shows the whole pipeline, even with no new annotations.
        ingested = run_flow(
            config_path=str(DEMO_CONFIG), work_dir=str(root / "work"), base_model=str(model_dir), force=True
        )
        outcome = ingested.train
    if outcome is None:
        raise RuntimeError(f"the demo flow did not train: {ingested.message}")
    learning = learning_report(tracking_uri, outcome.run_id, outcome.metrics, root / "work", config.eval.general_suite)
    return {
        "learning": learning,
        "run_id": outcome.run_id,
        "metrics": outcome.metrics,
        "adapter_dir": outcome.adapter_dir,
        "snapshot_dir": ingested.snapshot_dir,
        "reconciliation": ingested.reconciliation_table,
        "gate_passed": outcome.gate_passed,
        "registered_version": outcome.registered_version,
        "promotion": promotion_summary(
            tracking_uri,
            config.gate.registered_model,
            outcome.metrics,
            outcome.registered_version,
            adapter_dir=outcome.adapter_dir,
        ),
        "tracking_uri": tracking_uri,
        "mlflow_ui": f"{Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {tracking_uri}",
        "labelstudio_credentials": str(root / "labelstudio" / "credentials.json"),
    }
