"""Metric names in MLflow: sectioned, one per quantity, units where ambiguous (pipeline/track/metric_names.py)."""

from __future__ import annotations

import pytest

from pipeline.track.metric_names import FIXED, UnknownMetric, mlflow_key, sectioned


def test_stage_names_map_to_sections() -> None:
    assert mlflow_key("task_loss_adapter") == "task/loss_nats/adapter"
    assert mlflow_key("train_loss") == "train/loss" and mlflow_key("eval_loss_step") == "eval/loss"
    assert mlflow_key("forgetting_general_suite_mc_acc_delta_low") == "forgetting/general_suite_mc/acc_delta_frac_low"
    assert mlflow_key("forgetting_general_suite_ppl_ppl_change") == "forgetting/general_suite_ppl/ppl_change_rel"
    assert mlflow_key("forgetting_hellaswag_acc_adapter") == "forgetting/hellaswag/acc_adapter"
    assert mlflow_key("gate_general_suite_mc_accuracy_drop_threshold") == (
        "gate/general_suite_mc_accuracy_drop/threshold_pts"
    )
    assert mlflow_key("gate_general_suite_ppl_perplexity_increase_value") == (
        "gate/general_suite_ppl_perplexity_increase/value_rel"
    )
    assert mlflow_key("gate_beats_champion_value") == "gate/beats_champion/value_nats"
    assert mlflow_key("gate_task_quality_rouge_l_passed") == "gate/task_quality_rouge_l/passed"
    assert mlflow_key("champion_task_loss") == "champion/task/loss_nats"


def test_repeated_quantities_are_dropped_and_sectioned_names_kept() -> None:
    for name in ("eval_loss", "train_loss_final", "forgetting_mc_acc_base", "forgetting_ppl_delta"):
        assert mlflow_key(name) is None, name
    assert mlflow_key("sweep/children") == "sweep/children"
    assert mlflow_key("data/agreement/category/fleiss_kappa") == "data/agreement/category/fleiss_kappa"


def test_unknown_flat_name_is_refused() -> None:
    with pytest.raises(UnknownMetric, match=r"metric_names\.py"):
        mlflow_key("some_new_metric")


def test_one_name_per_key() -> None:
    assert len(set(FIXED.values())) == len(FIXED)
    assert all("/" in v for v in FIXED.values())
    with pytest.raises(ValueError, match="both be logged"):
        sectioned({"task_loss_base": 1.0, "task/loss_nats/base": 2.0})
    assert sectioned({"task_loss_base": 1.0, "eval_loss": 2.0}) == {"task/loss_nats/base": 1.0}
