"""The rank sweep: plan the child configs, open one parent MLflow run with a nested run per child, train and
assess each child on the same snapshot, and log the trade-off with the recommended child to the parent.

Every child trains on the snapshot's frozen train split and is assessed on its frozen eval split, so their
numbers compare. A child that fails (training or assessment raised) ends FAILED with an `error` tag and stays
in the trade-off table; the sweep goes on. What crosses between the parent and a child (in this process or as
a run of a GPU deployment) is plain data: the snapshot reference, the child's config, its run id; the child
writes its point as `sweep/point.json` in its own run, and the parent reads it back from there.

Shared across children: the tokenized dataset (pipeline/train/tokenized.py caches it by content, so only
the first child tokenizes). Not shared: `assess_adapter` loads the base model and scores the base on the eval
rows and the general suite again for each child (it takes an adapter directory, not a loaded base).
"""

from __future__ import annotations

import json
import math
import tempfile
import traceback
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Literal

from mlflow.entities import Param

from pipeline.config import TARGET_PRESETS, PipelineConfig
from pipeline.evaluate.tradeoff import Recommendation, SweepPoint, json_rows, table_rows, write_report
from pipeline.track import tracking
from pipeline.track.orphans import owner_tags
from pipeline.track.promotion import Assessment, assess_adapter, log_training_keys, write_artifacts
from pipeline.track.review import NOTE_TAG, run_description, set_run_verdict, write_model_card
from pipeline.track.step_logger import StepLogger
from pipeline.track.store import tracking_client
from pipeline.train.recipe import train_adapter
from pipeline.train.results import TrainResult
from pipeline.validate.snapshot import Snapshot

AlphaPolicy = Literal["scale", "fixed"]
TAG_PARENT = "mlflow.parentRunId"  # MLflow's own: the UI nests the child under the parent
TAG_SWEEP_CONFIG = "sweep_config"
TAG_RECOMMENDED = "recommended"
TAG_ERROR = "error"
POINT_ARTIFACT = "sweep/point.json"


@dataclass(frozen=True)
class ChildSpec:
    """One config of the sweep: its label (`r8`, `r8-qv-lr0.0002`) and the whole config it trains with."""

    label: str
    config: PipelineConfig


def parse_targets(value: str) -> str | tuple[str, ...]:
    """`qv` / `all-linear` (presets) or a comma list of module names (`q_proj,v_proj`)."""
    if value in TARGET_PRESETS:
        return value
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if not names:
        raise ValueError(f"--targets {value!r}: name a preset ({sorted(TARGET_PRESETS)}) or modules like q_proj,v_proj")
    return names


def targets_label(targets: str | tuple[str, ...]) -> str:
    return targets if isinstance(targets, str) else "+".join(targets)


def plan_children(
    config: PipelineConfig,
    ranks: list[int],
    learning_rates: list[float] | None = None,
    targets: list[str | tuple[str, ...]] | None = None,
    alpha: AlphaPolicy = "scale",
) -> list[ChildSpec]:
    """Every (rank, learning rate, targets) combination as a child config. Learning rates and targets default to
    the config's. `alpha="scale"` keeps the config's alpha / r (so the update's scale does not change with the
    rank); `"fixed"` keeps the config's alpha for every rank."""
    if not ranks:
        raise ValueError("--ranks: name at least one LoRA rank, e.g. --ranks 4 8 16")
    for name, values in (("--ranks", ranks), ("--lrs", learning_rates or []), ("--targets", targets or [])):
        if len(set(values)) != len(values):
            raise ValueError(f"{name} lists a value twice: {values}; each child config must be different")
    lrs = learning_rates or [config.train.learning_rate]
    tms = targets or [config.lora.target_modules]
    ratio = config.lora.alpha / config.lora.r
    specs = []
    for r, lr, tm in product(ranks, lrs, tms):
        lora = {"r": r, "target_modules": tm, "alpha": ratio * r if alpha == "scale" else config.lora.alpha}
        # Validated again as a whole config: a rank out of range fails here, naming the field, before any run.
        data = config.model_dump()
        data["lora"].update(lora)
        data["train"]["learning_rate"] = lr
        child = PipelineConfig.model_validate(data)
        label = f"r{r}"
        if len(tms) > 1:
            label += f"-{targets_label(tm)}"
        if len(lrs) > 1:
            label += f"-lr{lr:g}"
        specs.append(ChildSpec(label, child))
    return specs


@dataclass(frozen=True)
class SweepRuns:
    """The parent run and one child run id per label, in plan order."""

    parent_id: str
    child_ids: dict[str, str]


def open_sweep(
    uri: str, config: PipelineConfig, snapshot: Snapshot, specs: list[ChildSpec], tags: dict[str, str] | None = None
) -> SweepRuns:
    """The parent run (the sweep's plan as params, the snapshot as its dataset input) and a nested child run per
    config, all created up front so every config shows in the UI even before (or if never) its worker starts."""
    client = tracking_client(uri)
    exp = tracking.ensure_experiment(client, uri, config.mlflow.experiment)
    common = {"dataset_hash": snapshot.hash, "snapshot_path": str(snapshot.path), **owner_tags(), **(tags or {})}
    parent = client.create_run(
        exp.experiment_id, tags={**common, "sweep": "parent"}, run_name=f"sweep-{snapshot.hash[:8]}"
    ).info.run_id
    first = specs[0].config
    plan = {
        "sweep_children": len(specs),
        "sweep_configs": ", ".join(s.label for s in specs),
        "sweep_ranks": ",".join(str(r) for r in sorted({s.config.lora.r for s in specs})),
        "sweep_learning_rates": ",".join(f"{lr:g}" for lr in sorted({s.config.train.learning_rate for s in specs})),
        "sweep_targets": ",".join(sorted({targets_label(s.config.lora.target_modules) for s in specs})),
        "base_model": first.base_model,
        "dataset_hash": snapshot.hash,
        "epochs": first.train.epochs,
        "max_steps": first.train.max_steps,
    }
    client.log_batch(parent, params=[Param(k, str(v)[:6000]) for k, v in plan.items()])
    client.log_inputs(parent, datasets=_dataset_inputs(snapshot))
    children = {}
    for spec in specs:
        child_tags = {**common, TAG_PARENT: parent, TAG_SWEEP_CONFIG: spec.label, "sweep": "child"}
        run_id = tracking.start_run(uri, spec.config, snapshot, tags=child_tags)
        client.set_tag(run_id, "mlflow.runName", f"{spec.label}-{snapshot.hash[:8]}")
        children[spec.label] = run_id
    return SweepRuns(parent, children)


def _dataset_inputs(snapshot: Snapshot) -> list[Any]:
    from mlflow.tracking.fluent import _create_dataset_input

    return [_create_dataset_input(ds, context, None) for ds, context in tracking.snapshot_inputs(snapshot)]


def point_of(spec: ChildSpec, run_id: str, result: TrainResult, assessment: Assessment) -> SweepPoint:
    """What the trade-off needs from a finished child: task gain with its interval, ROUGE-L delta, forgetting per
    task and against its budget, whether the forgetting rules passed, size and train time."""
    gate = spec.config.gate
    forgetting: dict[str, float] = {}
    used: list[float] = []
    rule_names = set()
    for c in assessment.forgetting.comparisons:
        if c.kind == "accuracy":
            forgetting[c.task] = 100 * c.delta.estimate  # points
            used.append(_share(-100 * c.delta.estimate, gate.max_accuracy_drop_points))
            rule_names.add(f"{c.task}_accuracy_drop")
        else:
            forgetting[c.task] = c.delta.estimate  # relative perplexity change
            used.append(_share(c.delta.estimate, gate.max_perplexity_increase))
            rule_names.add(f"{c.task}_perplexity_increase")
    rules = [r for r in assessment.verdict.rules if r.name in rule_names]
    gain = assessment.task.improvement
    quality = assessment.task.quality
    return SweepPoint(
        **_config_fields(spec, run_id),
        status="FINISHED",
        task_gain=gain.estimate,
        task_gain_low=gain.low,
        task_gain_high=gain.high,
        rouge_l_delta=quality.rouge_l.estimate if quality is not None else math.nan,
        forgetting=forgetting,
        forgetting_budget_used=max(used, default=0.0),
        forgetting_passed=bool(rules) and all(r.passed for r in rules),
        gate_passed=assessment.verdict.passed,
        adapter_bytes=result.adapter_bytes,
        trainable_params=result.trainable_params,
        train_wall_time_s=result.wall_time_s,
    )


def _share(change: float, budget: float) -> float:
    """How much of a forgetting budget a (harmful-positive) change uses; 0 when it helps."""
    if change <= 0:
        return 0.0
    return change / budget if budget > 0 else math.inf


def _config_fields(spec: ChildSpec, run_id: str) -> dict[str, Any]:
    """What a point says about its child's config, finished or failed."""
    lora = spec.config.lora
    return {
        "label": spec.label,
        "run_id": run_id,
        "rank": lora.r,
        "alpha": lora.alpha,
        "learning_rate": spec.config.train.learning_rate,
        "targets": targets_label(lora.target_modules),
    }


def failed_point(spec: ChildSpec, run_id: str, error: str) -> SweepPoint:
    return SweepPoint(**_config_fields(spec, run_id), status="FAILED", error=error)


def run_child(
    uri: str,
    spec: ChildSpec,
    snapshot: Snapshot,
    run_id: str,
    adapter_dir: str | Path,
    tags: dict[str, str] | None = None,
) -> SweepPoint:
    """Train and assess one child in its run, log what a train run logs plus its point; a child that raises ends
    FAILED with its error (tag, traceback artifact) and comes back as a failed point, so the sweep goes on.
    The run's owner becomes this process (on a GPU worker, not the parent's), so the orphan sweep judges it by
    the process that trains it; `tags` (its flow run id) are set with it."""
    config = spec.config
    client = tracking_client(uri)
    for name, value in {**owner_tags(), **(tags or {})}.items():
        client.set_tag(run_id, name, value)
    try:
        train_rows, eval_rows = snapshot.hf_split()  # memory-mapped; tokenized once for the whole sweep (cached)
        steps = StepLogger(uri, run_id, adapter_dir=str(adapter_dir))
        try:
            result = train_adapter(
                config, train_rows, eval_rows, adapter_dir, dataset_hash=snapshot.hash, on_step=steps
            )
            steps.flush(timeout_s=config.mlflow.outage_patience_s)
        finally:
            steps.close()
        tracking.log_metrics(uri, run_id, result.metrics())  # the train flow's names
        train_df, eval_df = snapshot.split()
        assessment = assess_adapter(config, result.adapter_dir, eval_df, tracking_uri=uri, train_records=train_df)
        point = point_of(spec, run_id, result, assessment)
        write_model_card(result.adapter_dir, result.manifest, assessment, run_id=run_id)
        out = write_artifacts(assessment, result.history, result.adapter_dir.parent / "evaluation")
        tracking.log_metrics(uri, run_id, assessment.metrics())
        set_run_verdict(
            uri, run_id, assessment, run_description(assessment, run_id=run_id, base_model=config.base_model)
        )
        log_training_keys(uri, run_id, train_df)
        tracking.log_artifacts(uri, run_id, out, "evaluation")
        tracking.log_artifacts(uri, run_id, result.adapter_dir, "adapter")
    except Exception as e:  # a failed child is one of the sweep's results: shown FAILED, never dropped
        error = f"{type(e).__name__}: {e}"
        mark_failed(uri, run_id, error, traceback.format_exc())
        point = failed_point(spec, run_id, error)
        tracking.log_text(uri, run_id, json.dumps(point.to_json_dict(), indent=2), POINT_ARTIFACT)
        return point
    tracking.log_text(uri, run_id, json.dumps(point.to_json_dict(), indent=2), POINT_ARTIFACT)
    tracking.end_run(uri, run_id, "FINISHED")
    return point


def mark_failed(uri: str, run_id: str, error: str, details: str = "") -> None:
    """End a child FAILED with its error on the run page (tag, description) and the traceback as an artifact."""
    client = tracking_client(uri)
    client.set_tag(run_id, TAG_ERROR, error[:5000])
    client.set_tag(run_id, NOTE_TAG, f"**Sweep child FAILED**\n\n```\n{error[:4000]}\n```\n")
    if details:
        client.log_text(run_id, details, "error.txt")
    client.set_terminated(run_id, "FAILED")


def read_point(uri: str, spec: ChildSpec, run_id: str, why_missing: str) -> SweepPoint:
    """The point a child logged; a child that logged none (its worker died, its flow run crashed) is ended FAILED
    with `why_missing` and comes back as a failed point."""
    client = tracking_client(uri)
    folder = POINT_ARTIFACT.rsplit("/", 1)[0]
    if any(f.path == POINT_ARTIFACT for f in client.list_artifacts(run_id, folder)):
        with tempfile.TemporaryDirectory() as tmp:
            data = json.loads(Path(client.download_artifacts(run_id, POINT_ARTIFACT, tmp)).read_text())
        return SweepPoint.from_json_dict(data)
    if client.get_run(run_id).info.status not in ("FINISHED", "FAILED", "KILLED"):
        mark_failed(uri, run_id, why_missing)
    return failed_point(spec, run_id, why_missing)


def finish_sweep(uri: str, parent_id: str, points: list[SweepPoint], out_dir: str | Path) -> Recommendation:
    """Write and log the trade-off (table as Markdown/CSV/JSON, the MLflow table, the Pareto plot) to the parent,
    tag the recommended child `recommended=true`, put the table and the rule in the parent's description."""
    out, rec = write_report(points, out_dir)
    client = tracking_client(uri)
    tracking.log_artifacts(uri, parent_id, out, "sweep")
    tracking.log_table(uri, parent_id, json_rows(table_rows(points, rec.point)), "sweep/tradeoff_table.json")
    failed = sum(p.status == "FAILED" for p in points)
    tracking.log_metrics(uri, parent_id, {"sweep/children": len(points), "sweep/failed": failed})
    if rec.point is not None:
        client.set_tag(rec.point.run_id, TAG_RECOMMENDED, "true")
        client.set_tag(parent_id, "recommended_run_id", rec.point.run_id)
        client.set_tag(parent_id, "recommended_config", rec.point.label)
        tracking.log_metrics(uri, parent_id, {"sweep/recommended_rank": rec.point.rank})
    headline = f"**Rank sweep: {rec.point.label} recommended**" if rec.point else "**Rank sweep: none recommended**"
    if failed:
        headline += f" ({failed} of {len(points)} children failed)"
    body = (out / "tradeoff.md").read_text().removeprefix("# Rank sweep\n\n")
    note = f"{headline}\n\n{body}\nArtifacts → sweep/pareto.png, sweep/tradeoff.csv, sweep/tradeoff.json\n"
    client.set_tag(parent_id, NOTE_TAG, note)
    return rec


def end_sweep(uri: str, parent_id: str, status: str, wall_time_s: float) -> None:
    tracking.log_metrics(uri, parent_id, {"sweep/wall_time_s": wall_time_s})
    tracking.end_run(uri, parent_id, status)


def config_of(spec: ChildSpec) -> dict[str, Any]:
    """The child's config as plain data (what crosses to a deployment)."""
    return spec.config.model_dump(mode="json")
