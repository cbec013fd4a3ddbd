"""Manual alias moves for reviewers: promote a run's registered version to an alias, or roll the alias back to the
version that held it before; each shows the gate's verdict from the run page.

A move records on the promoted version which version held the alias before (`previous_<alias>` tag), so a
rollback steps back one move at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from pipeline.track.registry import get_alias, previous_tag
from pipeline.track.review import GATE_TAG, NOTE_TAG
from pipeline.track.store import tracking_client


@dataclass(frozen=True)
class AliasMove:
    """Where an alias was and where it is now, with the verdict of the run behind the new version."""

    name: str
    alias: str
    before: str | None
    after: str
    run_id: str
    gate: str  # passed | failed | not judged
    verdict: str  # the run page's description (verdict table), or a line saying there is none

    def summary(self) -> str:
        was = "no version" if self.before is None else f"version {self.before}"
        return f"{self.name}@{self.alias}: {was} -> version {self.after} (run {self.run_id}, gate {self.gate})"


def _verdict(uri: str, run_id: str) -> tuple[str, str]:
    try:
        tags = tracking_client(uri).get_run(run_id).data.tags
    except MlflowException as e:
        raise ValueError(f"run {run_id} not found on the tracking server: {e.message}") from e
    note = tags.get(NOTE_TAG) or "(the run has no gate verdict in its description)"
    return tags.get(GATE_TAG, "not judged"), note.split("\nHow to load:")[0].rstrip()


def promote_run(uri: str, name: str, run_id: str, alias: str, *, force: bool = False) -> AliasMove:
    """Point `name@alias` at the registered version of `run_id`; a run whose gate did not pass needs `force`."""
    gate, verdict = _verdict(uri, run_id)
    if gate != "passed" and not force:
        raise ValueError(
            f"the gate did not pass run {run_id} (gate: {gate}):\n{verdict}\n"
            "promote it anyway with --force, after reading the verdict above"
        )
    client = tracking_client(uri)
    versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if not versions:
        raise ValueError(
            f"run {run_id} has no registered version of {name!r} (the flow registers only adapters whose gate "
            "passed); pick a run listed on the model's registry page"
        )
    version = str(max(int(v.version) for v in versions))
    before = get_alias(uri, name, alias)
    was = None if before is None else str(before.version)
    if was != version:
        client.set_model_version_tag(name, version, previous_tag(alias), "none" if was is None else was)
        client.set_registered_model_alias(name, alias, version)
    return AliasMove(name, alias, was, version, run_id, gate, verdict)


def rollback(uri: str, name: str, alias: str) -> AliasMove:
    """Move `name@alias` back to the version that held it before the current one."""
    current = get_alias(uri, name, alias)
    if current is None:
        raise ValueError(f"{name}@{alias} does not exist: nothing to roll back")
    previous = current.tags.get(previous_tag(alias), "none")
    if previous == "none":
        raise ValueError(f"{name}@{alias} is version {current.version}, and no version held {alias!r} before it")
    client = tracking_client(uri)
    target = client.get_model_version(name, previous)
    client.set_registered_model_alias(name, alias, previous)
    gate, verdict = _verdict(uri, str(target.run_id))
    return AliasMove(name, alias, str(current.version), previous, str(target.run_id), gate, verdict)
