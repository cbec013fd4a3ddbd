"""Assess a saved adapter (forgetting + task evaluation + champion comparison + gate) and promote it.

One base model in memory for the whole assessment: the adapter under test is scored with and
without `disable_adapter()`, and the champion's adapter (if any) is loaded next to it on the same
base weights to score the same held-out rows.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities.model_registry import ModelVersion

from pipeline.config import PipelineConfig
from pipeline.evaluate.forgetting import ForgettingReport, forgetting_check, load_verified_adapter
from pipeline.evaluate.gate import GateVerdict, evaluate_gate
from pipeline.evaluate.plots import forgetting_bars, loss_curves
from pipeline.evaluate.task_eval import TaskEvaluation, evaluate_task, held_out_loss_with_adapter
from pipeline.track.registry import CANDIDATE, CHAMPION, TAG_TASK_LOSS, fetch_champion, register_adapter
from pipeline.train.manifest import MANIFEST
from pipeline.train.results import StepLog


@dataclass(frozen=True)
class Assessment:
    forgetting: ForgettingReport
    task: TaskEvaluation
    verdict: GateVerdict
    champion_version: str | None = None
    champion_task_loss: float | None = None
    champion_note: str = ""

    def metrics(self) -> dict[str, float]:
        out = {**self.forgetting.metrics(), **self.task.metrics(), **self.verdict.metrics()}
        if self.champion_task_loss is not None:
            out["champion_task_loss"] = self.champion_task_loss
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
        if self.champion_note:
            lines += ["", f"Champion: {self.champion_note}"]
        return "\n".join(lines) + "\n"


def assess_adapter(
    config: PipelineConfig, adapter_dir: str | Path, eval_records: pd.DataFrame, *, tracking_uri: str | None = None
) -> Assessment:
    """Guards, forgetting check, task evaluation, champion comparison and the gate verdict."""
    model, tokenizer = load_verified_adapter(config, adapter_dir)
    forgetting = forgetting_check(model, tokenizer, config)
    task = evaluate_task(model, tokenizer, eval_records, config)
    champion_loss: float | None = None
    champion_version: str | None = None
    note = ""
    if config.gate.beat_champion and tracking_uri is not None:
        manifest = json.loads((Path(adapter_dir) / MANIFEST).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            champ = fetch_champion(tracking_uri, config.gate.registered_model, tmp)
            if champ is None:
                note = f"no `{CHAMPION}` alias on {config.gate.registered_model!r} yet"
            elif champ.base_weights_hash != manifest["base_model"]["weights_hash"]:
                # Losses from different bases are not comparable token for token; say so instead of guessing.
                note = f"version {champ.version.version} was trained on another base; not compared"
            else:
                champion_version = str(champ.version.version)
                champion_loss = held_out_loss_with_adapter(
                    model, tokenizer, eval_records, str(champ.adapter_dir), config
                )
                note = f"version {champion_version}, held-out loss {champion_loss:.4f} on this run's split"
    verdict = evaluate_gate(config.gate, task, forgetting, champion_task_loss=champion_loss)
    return Assessment(
        forgetting=forgetting,
        task=task,
        verdict=verdict,
        champion_version=champion_version,
        champion_task_loss=champion_loss,
        champion_note=note,
    )


def promote(
    config: PipelineConfig, adapter_dir: str | Path, assessment: Assessment, *, tracking_uri: str, run_id: str
) -> ModelVersion | None:
    """Register a passing adapter under `candidate` (or `champion` with gate.auto_promote); None if it failed."""
    if not assessment.verdict.passed:
        return None
    model, tokenizer = load_verified_adapter(config, adapter_dir)
    manifest: dict[str, Any] = json.loads((Path(adapter_dir) / MANIFEST).read_text())
    alias = CHAMPION if config.gate.auto_promote else CANDIDATE
    return register_adapter(
        tracking_uri,
        run_id,
        model,
        tokenizer,
        name=config.gate.registered_model,
        alias=alias,
        base_model=config.base_model,
        manifest=manifest,
        tags={TAG_TASK_LOSS: f"{assessment.task.adapter_loss:.6f}", "source_run_id": run_id},
    )


def write_artifacts(assessment: Assessment, history: list[StepLog], out_dir: str | Path) -> Path:
    """Everything a reviewer opens, in one directory: gate report, per-item scores, side-by-side rows, plots."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gate_report.md").write_text(assessment.report_markdown())
    (out / "gate_verdict.json").write_text(json.dumps(assessment.verdict.as_dict(), indent=2))
    assessment.forgetting.write(out / "forgetting.json")
    (out / "task_eval.json").write_text(json.dumps(assessment.task.as_dict(), indent=2))
    side = pd.DataFrame(assessment.task.side_by_side)
    (out / "side_by_side.html").write_text(side.to_html(index=False, escape=True))
    forgetting_bars(assessment.forgetting, out / "forgetting.png")
    if history:
        loss_curves(history, out / "loss_curves.png")
    return out
