"""The names metrics carry in MLflow: one sectioned name per quantity, units in the name where ambiguous.

The stages report flat names (`task_loss_adapter`, `forgetting_general_suite_mc_acc_delta`, `gate_passed`);
this module is the one place that turns them into the keys reviewers see in the MLflow UI, where `/`
groups them into sections (`train/`, `eval/`, `task/`, `forgetting/`, `gate/`, `champion/`, `data/`,
`model/`, `registry/`; MLflow's own system metrics come under `system/`). Names that repeat another
quantity are dropped here, not logged twice:

- `eval_loss` and `train_loss_final` are the last points of the `eval/loss` and `train/loss` series;
- `forgetting_mc_acc_*` and `forgetting_ppl_*` are the first skeleton's short names of the built-in suite's
  tasks, already logged under `forgetting/general_suite_mc/...` and `forgetting/general_suite_ppl/...`.

Units: losses are nats/token (`_nats` where a difference could be read as a ratio), accuracy deltas are
fractions (`acc_delta_frac`) and the gate's accuracy rule is judged in points (`_pts`), perplexity changes
are relative (`ppl_change_rel`), times are seconds (`_s`), sizes bytes (`_bytes`).

Names that already contain `/` (`data/agreement/...`, `sweep/...`, `demo/...`) are logged as they are. A flat
name this module does not know is a programming error (`UnknownMetric`), caught by the tests that run the
flows against a real MLflow server — never a silently unsectioned key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# Quantities that are already logged under another name (see the module docstring).
DROPPED = frozenset(
    {
        "eval_loss",
        "train_loss_final",
        *(f"forgetting_mc_acc_{s}" for s in ("base", "adapter", "delta")),
        *(f"forgetting_ppl_{s}" for s in ("base", "adapter", "delta")),
    }
)

FIXED: dict[str, str] = {
    # Per optimizer step (pipeline/track/step_logger.py).
    "train_loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/step_tokens_per_s",
    "padding_fraction": "train/padding_frac",
    "eval_loss_step": "eval/loss",
    # Once per run (TrainResult.metrics() and the train flow).
    "train_steps": "train/steps",
    "train_wall_time_s": "train/wall_time_s",
    "train_tokens_per_s": "train/tokens_per_s",
    "train_peak_memory_bytes": "train/peak_memory_bytes",
    "train_resumed_from_step": "train/resumed_from_step",
    "train_mfu": "train/mfu",
    "train_replay_rows": "train/replay_rows",
    "trainable_params": "model/trainable_params",
    "trainable_share": "model/trainable_frac",
    "adapter_bytes": "model/adapter_bytes",
    "registered_version": "registry/version",
    # The pull behind the snapshot.
    "data_tasks_seen": "data/tasks_seen",
    "data_rows_accepted": "data/rows_accepted",
    "data_rows_quarantined": "data/rows_quarantined",
    "data_tasks_unusable": "data/tasks_unusable",
    # Task evaluation on the held-out rows (pipeline/evaluate/task_eval.py, task_quality.py).
    "task_loss_base": "task/loss_nats/base",
    "task_loss_adapter": "task/loss_nats/adapter",
    "task_loss_improvement": "task/loss_nats/improvement",
    "task_loss_improvement_low": "task/loss_nats/improvement_low",
    "task_loss_improvement_high": "task/loss_nats/improvement_high",
    "task_ppl_base": "task/perplexity/base",
    "task_ppl_adapter": "task/perplexity/adapter",
    "task_generated_examples": "task/generated_rows",
    "task_rouge_l_base": "task/rouge_l/base",
    "task_rouge_l_adapter": "task/rouge_l/adapter",
    "task_rouge_l_delta": "task/rouge_l/delta",
    "task_rouge_l_delta_low": "task/rouge_l/delta_low",
    "task_rouge_l_delta_high": "task/rouge_l/delta_high",
    "task_rouge_l_vs_champion": "task/rouge_l/vs_champion",
    "task_rouge_l_vs_champion_low": "task/rouge_l/vs_champion_low",
    "task_rouge_l_vs_champion_high": "task/rouge_l/vs_champion_high",
    "task_exact_match_base": "task/exact_match/base",
    "task_exact_match_adapter": "task/exact_match/adapter",
    "task_exact_match_delta": "task/exact_match/delta",
    "task_exact_match_delta_low": "task/exact_match/delta_low",
    "task_exact_match_delta_high": "task/exact_match/delta_high",
    "task_exact_match_mcnemar_p": "task/exact_match/mcnemar_p",
    # The champion scored on the same frozen rows, logged beside this run's figures.
    "champion_task_loss": "champion/task/loss_nats",
    "champion_rouge_l": "champion/task/rouge_l",
    "champion_exact_match": "champion/task/exact_match",
    # What the forgetting check cost.
    "forgetting_wall_time_s": "forgetting/wall_time_s",
    "forgetting_to_train_time_ratio": "forgetting/time_vs_train_ratio",
    "gate_passed": "gate/passed",
}

# forgetting_<task>_acc_<stat> / forgetting_<task>_ppl_<stat> (pipeline/evaluate/forgetting.py).
_FORGETTING = re.compile(
    r"^forgetting_(?P<task>.+)_(?P<kind>acc|ppl)_(?P<stat>base|adapter|delta|change)(?P<end>_low|_high)?$"
)
_FORGETTING_STAT = {"base": "{k}_base", "adapter": "{k}_adapter", "delta": "acc_delta_frac", "change": "ppl_change_rel"}
# gate_<rule>_<field> (pipeline/evaluate/gate.py GateVerdict.metrics()).
_GATE = re.compile(r"^gate_(?P<rule>.+)_(?P<field>passed|value|threshold|mde)$")


def rule_unit(rule: str, field: str) -> str:
    """The unit of a gate rule's value, threshold or MDE (`field`), as a key suffix ('' where the name says it)."""
    if rule.endswith("_accuracy_drop"):
        return "_pts"  # accuracy points on a 0-100 scale
    if rule.endswith("_perplexity_increase"):
        return "_rel"  # relative change of word perplexity (0.05 = +5%)
    if rule in ("task_improvement", "beats_champion"):
        return "_nats"  # held-out loss difference, nats/token
    if rule == "no_eval_leakage":
        return "_rows"
    if rule == "task_quality_exact_match":
        # McNemar's p-value against alpha; the MDE is an exact-match difference (a fraction of rows).
        return "_frac" if field == "mde" else "_p"
    return ""  # ROUGE-L and judge-preference differences on their own 0-1 scale


class UnknownMetric(ValueError):
    """A flat metric name with no sectioned name here: add it to FIXED (or a pattern) before logging it."""


def mlflow_key(name: str) -> str | None:
    """The MLflow key of a stage's metric `name`; None when the quantity is already logged under another."""
    if "/" in name:
        return name
    if name in DROPPED:
        return None
    if name in FIXED:
        return FIXED[name]
    if m := _FORGETTING.match(name):
        stat = _FORGETTING_STAT[m["stat"]].format(k=m["kind"])
        return f"forgetting/{m['task']}/{stat}{m['end'] or ''}"
    if m := _GATE.match(name):
        field = m["field"]
        suffix = "" if field == "passed" else rule_unit(m["rule"], field)
        return f"gate/{m['rule']}/{field}{suffix}"
    raise UnknownMetric(
        f"metric {name!r} has no MLflow name; add it to pipeline/track/metric_names.py (one sectioned name per quantity)"
    )


def sectioned(metrics: Mapping[str, float]) -> dict[str, float]:
    """`metrics` under their MLflow keys, duplicates dropped; two names landing on one key is an error."""
    out: dict[str, float] = {}
    source: dict[str, str] = {}
    for name, value in metrics.items():
        key = mlflow_key(name)
        if key is None:
            continue
        if key in out and source[key] != name:
            raise ValueError(f"metrics {source[key]!r} and {name!r} would both be logged as {key!r}")
        out[key], source[key] = value, name
    return out
