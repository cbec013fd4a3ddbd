"""What a reviewer reads: the run's description (verdict table, champion vs challenger, how to load), the `gate`
tag, the registry version's description and the adapter's model card.

MLflow renders the run tag `mlflow.note.content` as Markdown at the top of the run page, and a model version's
description on its registry page; both are set through the client, never by editing stored files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.base_model import MODEL_STORE_ENV, STORE_PREFIX, portable_base
from pipeline.evaluate.gate import interval_text, mde_text
from pipeline.track.store import tracking_client

if TYPE_CHECKING:
    from pipeline.track.promotion import Assessment

NOTE_TAG = "mlflow.note.content"
GATE_TAG = "gate"  # passed | failed (a "not comparable" verdict is failed: it was never a pass)
ADAPTER_ARTIFACT = "adapter"


def _num(x: float) -> str:
    return f"{x:+.4f}" if math.isfinite(x) else "n/a"


def _val(x: float | None, digits: int = 4) -> str:
    return f"{x:.{digits}f}" if x is not None and math.isfinite(x) else "n/a"


def verdict_table(assessment: Assessment) -> list[str]:
    """Rule, value judged, threshold, pass/fail, interval, minimum detectable effect: one line per gate rule."""
    lines = ["| rule | value | threshold | result | interval | MDE |", "|---|---|---|---|---|---|"]
    for r in assessment.verdict.rules:
        lines.append(
            f"| {r.name} | {_num(r.value)} | {_num(r.threshold)} | {'pass' if r.passed else '**FAIL**'} | "
            f"{interval_text(r)} | {mde_text(r)} |"
        )
    return lines


def champion_table(assessment: Assessment) -> list[str]:
    """This adapter next to the base and the champion on the same frozen eval rows."""
    m = assessment.task.metrics()
    champ = assessment.champion_task_loss
    cq = assessment.champion_quality
    champ_rouge, champ_exact = (cq.rouge_l, cq.exact_match) if cq is not None else (None, None)
    lines = [
        "| held-out rows | base | challenger (this run) | champion |",
        "|---|---|---|---|",
        f"| loss (nats/token) | {_val(m['task_loss_base'])} | {_val(m['task_loss_adapter'])} | {_val(champ)} |",
        f"| ROUGE-L | {_val(m['task_rouge_l_base'], 3)} | {_val(m['task_rouge_l_adapter'], 3)} | "
        f"{_val(champ_rouge, 3)} |",
        f"| exact match | {_val(m['task_exact_match_base'], 3)} | {_val(m['task_exact_match_adapter'], 3)} | "
        f"{_val(champ_exact, 3)} |",
    ]
    note = assessment.champion_note or "no champion compared"
    return [*lines, "", f"Champion: {note}"]


def load_snippet(base_model: str, *, run_id: str, model_uri: str | None = None) -> list[str]:
    """Copy-paste code that loads the adapter on its base (from the registry when registered); the base is named
    by its portable reference, resolved by `resolve_base` where it is relative to the model store."""
    base = portable_base(base_model)
    in_store = base.ref.startswith(STORE_PREFIX)
    # A store-relative base opens wherever $LORA_PIPELINE_MODEL_STORE holds it: resolve_base finds it there.
    base_expr = f'resolve_base("{base.ref}")' if in_store else f'"{base.ref}"'
    resolve_import = ["from pipeline.base_model import resolve_base  # model-store:DIR -> $" + MODEL_STORE_ENV + "/DIR"]
    resolve_import = resolve_import if in_store else []
    note = (
        []
        if base.portable
        else [f"The base `{base.ref}` is a local directory outside the model store: this loads only where it exists."]
    )
    if model_uri is not None:
        load = (
            f'c = mlflow.transformers.load_model("{model_uri}", return_type="components", base_model_path={base_expr})'
            if in_store
            else f'c = mlflow.transformers.load_model("{model_uri}", return_type="components")'
        )
        return [
            "```python",
            "import mlflow",
            *resolve_import,
            load,
            'model, tokenizer = c["model"], c["tokenizer"]  # a PeftModel on its base',
            "```",
            f"or talk to it: `lora-pipeline chat --adapter {model_uri}`",
            *note,
        ]
    return [
        "```python",
        "import mlflow",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM",
        *resolve_import,
        f'path = mlflow.artifacts.download_artifacts(run_id="{run_id}", artifact_path="{ADAPTER_ARTIFACT}")',
        f"model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({base_expr}), path)",
        "```",
        f"or talk to it: `lora-pipeline chat --adapter PATH` after the download; promote it: `lora-pipeline promote {run_id}`",
        *note,
    ]


def run_description(assessment: Assessment, *, run_id: str, base_model: str, model_uri: str | None = None) -> str:
    """The run page's description: verdict headline and table, champion vs challenger, how to load."""
    lines = [
        f"**Promotion gate: {assessment.verdict.headline}**",
        "",
        *verdict_table(assessment),
        "",
        "MDE: the smallest true effect this eval set detects with 80% power (the interval's scale); a rule whose "
        "threshold lies within it of zero cannot tell.",
        "",
        *champion_table(assessment),
        "",
        "How to load:",
        "",
        *load_snippet(base_model, run_id=run_id, model_uri=model_uri),
        "",
        "Full report: Artifacts → evaluation/gate_report.md",
    ]
    return "\n".join(lines) + "\n"


def set_run_verdict(uri: str, run_id: str, assessment: Assessment, description: str) -> None:
    """Put the verdict on the run page: the description and the `gate` tag."""
    client = tracking_client(uri)
    client.set_tag(run_id, NOTE_TAG, description)
    client.set_tag(run_id, GATE_TAG, "passed" if assessment.verdict.passed else "failed")


def version_description(assessment: Assessment | None, *, name: str, version: str, base_model: str, run_id: str) -> str:
    """The registry version's description: the gate's verdict and a load snippet."""
    head = "Gate verdict: not recorded" if assessment is None else f"Gate verdict: {assessment.verdict.headline}"
    lines = [head, ""]
    if assessment is not None:
        lines += [*verdict_table(assessment), ""]
    lines += [
        f"Trained in run {run_id} on base `{portable_base(base_model).ref}`.",
        "",
        *load_snippet(base_model, run_id=run_id, model_uri=f"models:/{name}/{version}"),
    ]
    return "\n".join(lines) + "\n"


def model_card(manifest: dict[str, Any], assessment: Assessment, *, run_id: str) -> str:
    """README.md of the adapter directory (replaces PEFT's empty template): what it is, what it was trained on,
    how it scored, what it is for and how to load it."""
    base = manifest.get("base_model") or {}
    cfg = manifest.get("config") or {}
    lora = cfg.get("lora") or {}
    train = cfg.get("train") or {}
    base_id = portable_base(str(base.get("model_id", cfg.get("base_model", "?")))).ref
    m = assessment.task.metrics()
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {base_id}",
        "tags: [lora, lora-pipeline]",
        "---",
        "",
        f"# LoRA adapter for `{base_id}`",
        "",
        "Trained by lora-pipeline (Label Studio annotations → validated snapshot → LoRA).",
        "",
        "## Base model",
        f"- id: `{base_id}`, revision: `{base.get('revision')}`",
        f"- weights hash: `{base.get('weights_hash')}`; tokenizer hash: `{base.get('tokenizer_hash')}`",
        "",
        "## Data",
        f"- snapshot hash: `{manifest.get('dataset_hash')}`",
        f"- {manifest.get('train_examples')} training examples, {manifest.get('eval_examples')} held out "
        "(the frozen split: held-out groups stay held out in later snapshots)",
        "",
        "## LoRA",
        f"- rank r = {lora.get('r')}, alpha = {lora.get('alpha')}, dropout = {lora.get('dropout')}",
        f"- target modules: {lora.get('target_modules')}",
        f"- learning rate {train.get('learning_rate')}, {train.get('epochs')} epochs, {manifest.get('steps')} steps",
        "",
        "## Evaluation (held-out rows of the snapshot)",
        f"- loss (nats/token): base {m['task_loss_base']:.4f} → adapter {m['task_loss_adapter']:.4f}",
        f"- ROUGE-L: base {m['task_rouge_l_base']:.3f} → adapter {m['task_rouge_l_adapter']:.3f}; exact match: "
        f"base {m['task_exact_match_base']:.3f} → adapter {m['task_exact_match_adapter']:.3f}",
        f"- promotion gate: {assessment.verdict.headline}",
        "",
        *verdict_table(assessment),
        "",
        "## Intended use",
        "Answers in the style and domain of the annotated prompts it was trained on, on the base above. It is not "
        "evaluated outside that domain beyond the forgetting check in the table; review the gate before serving.",
        "",
        "## How to load",
        *load_snippet(base_id, run_id=run_id),
    ]
    return "\n".join(lines) + "\n"


def write_model_card(adapter_dir: str | Path, manifest: dict[str, Any], assessment: Assessment, *, run_id: str) -> Path:
    path = Path(adapter_dir) / "README.md"
    path.write_text(model_card(manifest, assessment, run_id=run_id))
    return path
