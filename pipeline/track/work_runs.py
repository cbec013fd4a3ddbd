"""One MLflow run per unit of training work, found again by its key after a crash.

The work key is (snapshot hash, training config hash): a rerun of the same work, after its worker was
killed or its node lost, logs to the run the first attempt opened instead of leaving it RUNNING forever
and starting a second one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config import PipelineConfig
from pipeline.track import tracking
from pipeline.track.change_detection import TAG_BASE_FINGERPRINT, TAG_CONFIG_HASH, TAG_WORK_KEY
from pipeline.track.orphans import TAG_KILLED_REASON, owner_tags
from pipeline.track.store import tracking_client
from pipeline.validate.snapshot import Snapshot


def work_key(snapshot_hash: str, config: PipelineConfig) -> str:
    """`<snapshot hash 16>-<training config hash>`: names the adapter work dir and tags the MLflow run."""
    return f"{snapshot_hash[:16]}-{config.training_fingerprint()}"


@dataclass(frozen=True)
class RunClaim:
    """The run this attempt logs to; `resumed`: opened by an earlier attempt; `finished`: already done."""

    run_id: str
    resumed: bool = False
    finished: bool = False


def claim_run(
    tracking_uri: str,
    config: PipelineConfig,
    snapshot: Snapshot,
    *,
    key: str,
    base_fingerprint: str,
    tags: dict[str, str] | None = None,
    force: bool = False,
) -> RunClaim:
    """The newest run tagged with `key`: reopened when an earlier attempt did not finish, returned as
    `finished` when it did (unless `force`); otherwise a new run with params, lineage and the work tags."""
    client = tracking_client(tracking_uri)
    exp = tracking.ensure_experiment(client, tracking_uri, config.mlflow.experiment)
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.{TAG_WORK_KEY} = '{key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if runs:
        last = runs[0]
        if last.info.status == "FINISHED" and not force:
            return RunClaim(last.info.run_id, finished=True)
        if last.info.status != "FINISHED":
            attempts = int(last.data.tags.get("attempts", "1")) + 1
            client.update_run(last.info.run_id, status="RUNNING")
            for name, value in {**owner_tags(), **(tags or {}), "attempts": str(attempts)}.items():
                client.set_tag(last.info.run_id, name, value)
            if TAG_KILLED_REASON in last.data.tags:
                client.delete_tag(last.info.run_id, TAG_KILLED_REASON)
            return RunClaim(last.info.run_id, resumed=True)
    all_tags = {
        TAG_WORK_KEY: key,
        TAG_CONFIG_HASH: config.training_fingerprint(),
        TAG_BASE_FINGERPRINT: base_fingerprint,
        "attempts": "1",
        **owner_tags(),
        **(tags or {}),
    }
    return RunClaim(tracking.start_run(tracking_uri, config, snapshot, tags=all_tags))
