"""Assess a saved adapter (forgetting + task evaluation + champion comparison + gate) and promote it.

One base model in memory for the whole assessment: the adapter under test is scored with and
without `disable_adapter()`, and the champion's adapter (if any) is loaded next to it on the same
base weights to score the same held-out rows.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from pipeline.config import PipelineConfig
from pipeline.evaluate.forgetting import ForgettingReport, forgetting_check, load_verified_adapter
from pipeline.evaluate.gate import GateVerdict, evaluate_gate
from pipeline.evaluate.leakage import LeakageReport, Overlap, content_keys, overlap, unknown
from pipeline.evaluate.llm_judge import JudgeResult, ask_judge
from pipeline.evaluate.plots import forgetting_bars, loss_curves
from pipeline.evaluate.task_eval import TaskEvaluation, evaluate_task, score_with_adapter
from pipeline.evaluate.task_quality import ChampionQuality
from pipeline.track.registry import (
    CANDIDATE,
    CHAMPION,
    TAG_COMPARED_TO,
    TAG_TASK_LOSS,
    fetch_champion,
    get_alias,
    register_adapter,
)
from pipeline.track.registry_lock import registry_lock
from pipeline.track.review import version_description
from pipeline.track.store import tracking_client
from pipeline.train.manifest import MANIFEST
from pipeline.train.results import StepLog
from pipeline.validate.snapshot import load_snapshot

# Content keys (pipeline/evaluate/leakage.py) of the rows a run trained on: what the leakage rule reads when
# that run's adapter is the champion. Runs without it are read through their `snapshot_path` tag.
TRAIN_KEYS_ARTIFACT = "data/train_content_keys.json"


@dataclass(frozen=True)
class Assessment:
    forgetting: ForgettingReport
    task: TaskEvaluation
    verdict: GateVerdict
    champion_version: str | None = None
    champion_task_loss: float | None = None
    champion_note: str = ""
    leakage: LeakageReport | None = None
    # The champion's generations on the same rows (None: no champion compared, or nothing generated).
    champion_quality: ChampionQuality | None = None
    # The optional LLM judge's pairwise verdicts (None: gate.llm_judge_model is empty).
    judge: JudgeResult | None = None
    # The champion's answers to the side-by-side prompts (empty: no champion compared, or nothing generated).
    champion_outputs: tuple[str, ...] = ()

    def generations(self) -> list[dict[str, Any]]:
        """Per held-out prompt: reference, base, adapter and (when compared) champion answers with their scores,
        the table logged for the MLflow UI's artifact compare view (evaluation/side_by_side_table.json)."""
        rows = self.task.side_by_side
        if not self.champion_outputs:
            return rows
        return [r | {"champion_output": o} for r, o in zip(rows, self.champion_outputs, strict=True)]

    def metrics(self) -> dict[str, float]:
        out = {**self.forgetting.metrics(), **self.task.metrics(), **self.verdict.metrics()}
        if self.champion_task_loss is not None:
            out["champion_task_loss"] = self.champion_task_loss
        if self.champion_quality is not None:
            out |= self.champion_quality.metrics()
        return out

    def report_markdown(self) -> str:
        """The reviewer's summary: gate verdict, forgetting deltas with intervals, task metrics."""
        lines = [self.verdict.markdown(), "## Forgetting (adapter - base, paired bootstrap)", ""]
        lines += ["| task | metric | base | adapter | delta | interval |", "|---|---|---|---|---|---|"]
        for c in self.forgetting.comparisons:
            d = c.delta
            if c.kind == "accuracy":
                lines.append(
                    f"| {c.task} | accuracy | {c.base.value:.3f} | {c.adapter.value:.3f} | "
                    f"{100 * d.estimate:+.2f} pts | [{100 * d.low:+.2f}, {100 * d.high:+.2f}] |"
                )
            else:
                lines.append(
                    f"| {c.task} | word perplexity | {c.base.value:.3f} | {c.adapter.value:.3f} | "
                    f"{d.estimate:+.2%} | [{d.low:+.2%}, {d.high:+.2%}] |"
                )
        m = self.task.metrics()
        lines += [
            "",
            "## Task (held-out split)",
            "",
            "| metric | base | adapter |",
            "|---|---|---|",
            f"| loss (nats/token) | {m['task_loss_base']:.4f} | {m['task_loss_adapter']:.4f} |",
            f"| perplexity | {m['task_ppl_base']:.3f} | {m['task_ppl_adapter']:.3f} |",
            f"| exact match ({int(m['task_generated_examples'])} generated) | {m['task_exact_match_base']:.3f} | "
            f"{m['task_exact_match_adapter']:.3f} |",
            f"| ROUGE-L | {m['task_rouge_l_base']:.3f} | {m['task_rouge_l_adapter']:.3f} |",
        ]
        if self.task.quality is not None:
            lines += ["", self.task.quality.markdown()]
        if self.champion_note:
            lines += ["", f"Champion: {self.champion_note}"]
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ChampionComparison:
    """The champion this adapter was compared with (version None: no champion, or one that is not comparable)."""

    version: str | None
    task_loss: float | None
    note: str
    not_comparable: str = ""
    # The eval rows found among the champion's training rows (None: there is no champion).
    trained_on_eval: Overlap | None = None
    quality: ChampionQuality | None = None
    outputs: tuple[str, ...] = ()  # the champion's answers to the side-by-side prompts


def log_training_keys(uri: str, run_id: str, train_records: pd.DataFrame) -> None:
    """Record which rows (by content) the run trained on, for the leakage rule of later runs."""
    from pipeline.track import tracking

    tracking.log_text(uri, run_id, json.dumps(sorted(set(content_keys(train_records)))), TRAIN_KEYS_ARTIFACT)


def training_keys_of(uri: str, version: ModelVersion) -> tuple[set[str] | None, str]:
    """The content keys of the rows a registered version was trained on, or (None, why they are unknown)."""
    run_id = version.run_id or version.tags.get("source_run_id")
    if not run_id:
        return None, "the version names no source run"
    client = tracking_client(uri)
    folder, name = TRAIN_KEYS_ARTIFACT.rsplit("/", 1)
    if any(f.path == TRAIN_KEYS_ARTIFACT for f in client.list_artifacts(run_id, folder)):
        with tempfile.TemporaryDirectory() as tmp:
            return set(json.loads(Path(client.download_artifacts(run_id, TRAIN_KEYS_ARTIFACT, tmp)).read_text())), ""
    snapshot_path = client.get_run(run_id).data.tags.get("snapshot_path")
    if not snapshot_path:
        return None, f"run {run_id} logged no {name} and names no snapshot"
    try:
        snapshot = load_snapshot(snapshot_path)
    except (FileNotFoundError, ValueError) as e:
        return None, f"snapshot {snapshot_path} of run {run_id} cannot be read: {e}"
    wanted = version.tags.get("dataset_hash")
    if wanted and wanted != snapshot.hash:
        return None, f"snapshot {snapshot_path} holds {snapshot.hash[:12]}, not the trained {wanted[:12]}"
    train, _ = snapshot.split()
    return set(content_keys(train)), ""


def compare_champion(
    model: Any,
    tokenizer: Any,
    config: PipelineConfig,
    adapter_dir: str | Path,
    eval_records: pd.DataFrame,
    uri: str,
    side_by_side: list[dict[str, Any]] | None = None,
) -> ChampionComparison:
    """The current champion's held-out loss on this run's split, scored on the same base weights, its generations
    on the rows of our `side_by_side` table, and whether it trained on any of these eval rows."""
    manifest = json.loads((Path(adapter_dir) / MANIFEST).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        champ = fetch_champion(uri, config.gate.registered_model, tmp)
        if champ is None:
            return ChampionComparison(None, None, f"no `{CHAMPION}` alias on {config.gate.registered_model!r} yet")
        version = str(champ.version.version)
        source = f"champion version {version}'s training rows"
        keys, why = training_keys_of(uri, champ.version)
        seen = unknown(source, why) if keys is None else overlap(eval_records, source, keys)
        if champ.base_weights_hash != manifest["base_model"]["weights_hash"]:
            # Losses from different bases are not comparable token for token: the verdict says so, never a pass.
            why_not = (
                f"champion version {version} was trained on another base "
                f"(weights {str(champ.base_weights_hash)[:12]} vs {str(manifest['base_model']['weights_hash'])[:12]})"
            )
            return ChampionComparison(None, None, f"{why_not}; not compared", why_not, seen)
        scores = score_with_adapter(model, tokenizer, eval_records, str(champ.adapter_dir), config, side_by_side)
        note = f"version {version}, held-out loss {scores.task_loss:.4f} on this run's split"
        if scores.quality is not None:
            note += f", ROUGE-L {scores.quality.rouge_l:.3f}"
        return ChampionComparison(version, scores.task_loss, note, "", seen, scores.quality, scores.outputs)


def _leakage(
    eval_records: pd.DataFrame, train_records: pd.DataFrame | None, champ: ChampionComparison
) -> LeakageReport | None:
    sides: list[Overlap] = []
    if train_records is not None:
        sides.append(overlap(eval_records, "this run's training rows", set(content_keys(train_records))))
    if champ.trained_on_eval is not None:
        sides.append(champ.trained_on_eval)
    return LeakageReport(len(eval_records), tuple(sides)) if sides else None


def assess_adapter(
    config: PipelineConfig,
    adapter_dir: str | Path,
    eval_records: pd.DataFrame,
    *,
    tracking_uri: str | None = None,
    train_records: pd.DataFrame | None = None,
) -> Assessment:
    """Guards, forgetting check, task evaluation, champion comparison, leakage (eval rows vs `train_records` and
    the champion's training rows) and the gate verdict."""
    model, tokenizer = load_verified_adapter(config, adapter_dir)
    forgetting = forgetting_check(model, tokenizer, config)
    task = evaluate_task(model, tokenizer, eval_records, config)
    champ = ChampionComparison(None, None, "")
    if config.gate.beat_champion and tracking_uri is not None:
        champ = compare_champion(model, tokenizer, config, adapter_dir, eval_records, tracking_uri, task.side_by_side)
    leakage = _leakage(eval_records, train_records, champ)
    judge = ask_judge(config, task.side_by_side) if config.gate.llm_judge_model else None
    verdict = evaluate_gate(
        config.gate,
        task,
        forgetting,
        champion_task_loss=champ.task_loss,
        champion_not_comparable=champ.not_comparable,
        leakage=leakage,
        champion_quality=champ.quality,
        judge=judge,
    )
    return Assessment(
        forgetting=forgetting,
        task=task,
        verdict=verdict,
        champion_version=champ.version,
        champion_task_loss=champ.task_loss,
        champion_note=champ.note,
        leakage=leakage,
        champion_quality=champ.quality,
        judge=judge,
        champion_outputs=champ.outputs,
    )


@dataclass(frozen=True)
class Promotion:
    """What promotion did: the registered version (None: the gate failed) and the assessment it went by,
    which is a new one when the champion moved while this adapter was being evaluated."""

    version: ModelVersion | None
    assessment: Assessment
    reassessed: bool = False
    # Why the serving check refused a passing adapter (then nothing is registered); None when it served.
    refused: str | None = None


def _champion_now(uri: str, config: PipelineConfig) -> str | None:
    current = get_alias(uri, config.gate.registered_model, CHAMPION)
    return None if current is None else str(current.version)


def promote(
    config: PipelineConfig,
    adapter_dir: str | Path,
    assessment: Assessment,
    *,
    tracking_uri: str,
    run_id: str,
    eval_records: pd.DataFrame,
    lock_dir: str | Path,
    train_records: pd.DataFrame | None = None,
    serving_check: Callable[[Path], object] | None = None,
) -> Promotion:
    """Register a passing adapter under `candidate` (or `champion` with gate.auto_promote).

    Compare-and-set under the registry lock (pipeline/track/registry_lock.py): the champion is read again
    right before the alias moves; if it is no longer the one this adapter was compared with, the comparison
    and the gate are run again against the new one. Two flows finishing at once never both win.
    `train_records` (what the adapter trained on) are recorded in the run for the leakage rule of later runs.
    `serving_check(adapter_dir)` (the serving loader and a canary answer, pipeline/serve/canary.py) runs before
    anything is registered: a ValueError from it refuses the promotion with its reason, so an alias never
    points at an adapter the server would refuse.
    """
    if not assessment.verdict.passed:
        return Promotion(None, assessment)
    if serving_check is not None:
        try:
            serving_check(Path(adapter_dir))
        except ValueError as e:
            return Promotion(None, assessment, refused=str(e))
    if train_records is not None:
        log_training_keys(tracking_uri, run_id, train_records)
    model, tokenizer = load_verified_adapter(config, adapter_dir)
    manifest: dict[str, Any] = json.loads((Path(adapter_dir) / MANIFEST).read_text())
    alias = CHAMPION if config.gate.auto_promote else CANDIDATE
    reassessed = False
    with registry_lock(lock_dir, config.gate.registered_model):
        if config.gate.beat_champion and _champion_now(tracking_uri, config) != assessment.champion_version:
            champ = compare_champion(
                model, tokenizer, config, adapter_dir, eval_records, tracking_uri, assessment.task.side_by_side
            )
            leakage = assessment.leakage
            if champ.trained_on_eval is not None:
                leakage = (leakage or LeakageReport(len(eval_records), ())).with_side(champ.trained_on_eval)
            verdict = evaluate_gate(
                config.gate,
                assessment.task,
                assessment.forgetting,
                champion_task_loss=champ.task_loss,
                champion_not_comparable=champ.not_comparable,
                leakage=leakage,
                champion_quality=champ.quality,
                judge=assessment.judge,
            )
            assessment = replace(
                assessment,
                verdict=verdict,
                leakage=leakage,
                champion_version=champ.version,
                champion_task_loss=champ.task_loss,
                champion_quality=champ.quality,
                champion_outputs=champ.outputs,
                champion_note=f"{champ.note} (the champion moved during evaluation; compared again)",
            )
            reassessed = True
            if not verdict.passed:
                return Promotion(None, assessment, reassessed=True)
        version = register_adapter(
            tracking_uri,
            run_id,
            model,
            tokenizer,
            name=config.gate.registered_model,
            alias=alias,
            base_model=config.base_model,
            manifest=manifest,
            tags={
                TAG_TASK_LOSS: f"{assessment.task.adapter_loss:.6f}",
                "source_run_id": run_id,
                TAG_COMPARED_TO: assessment.champion_version or "none",
            },
        )
        description = version_description(
            assessment, name=version.name, version=str(version.version), base_model=config.base_model, run_id=run_id
        )
        client = tracking_client(tracking_uri)
        client.update_model_version(version.name, version.version, description)
        version = client.get_model_version(version.name, version.version)
    return Promotion(version, assessment, reassessed)


def write_artifacts(assessment: Assessment, history: list[StepLog], out_dir: str | Path) -> Path:
    """Everything a reviewer opens, in one directory: gate report, per-item scores, side-by-side rows, plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate_report.md").write_text(assessment.report_markdown())
    (out / "gate_verdict.json").write_text(json.dumps(assessment.verdict.as_dict(), indent=2))
    assessment.forgetting.write(out / "forgetting.json")
    (out / "task_eval.json").write_text(json.dumps(assessment.task.as_dict(), indent=2))
    if assessment.judge is not None:
        (out / "llm_judge.json").write_text(json.dumps(assessment.judge.table(), indent=2))
    side = pd.DataFrame(assessment.generations())
    (out / "side_by_side.html").write_text(side.to_html(index=False, escape=True))
    forgetting_bars(assessment.forgetting, out / "forgetting.png")
    if history:
        loss_curves(history, out / "loss_curves.png")
    return out
