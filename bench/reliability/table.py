"""The report: one row per section, the markdown table with its machine facts header, and reliability.json."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.reliability.kills import CHECKPOINT_EVERY
from bench.reliability.outages import OUTAGE_STEP_S

Row = tuple[str, Any, str, str, bool | None]  # what was tried, how many, outcome counts, goal, met


def _survived(trials: list[dict[str, Any]]) -> str:
    ok = sum(t["survived"] for t in trials)
    return f"survived {ok}, not {len(trials) - ok}"


def row_kill_training(d: dict[str, Any]) -> Row:
    t, total = d["trials"], d["total_steps"]
    diffs = [x["max_abs_diff"] for x in t if x.get("max_abs_diff") is not None]
    what = (
        f"Kill training: SIGKILL from the step hook of `train_adapter` at a random step of {total} (checkpoint every "
        f"{CHECKPOINT_EVERY} steps), then `resume=True`"
    )
    worst = f"{max(diffs):.1e}" if diffs else "- (no resume finished)"
    outcomes = (
        f"{_survived(t)}; killed at steps {', '.join(str(x['kill_at_step']) for x in t)}; resumed to step {total}: "
        f"{sum(x.get('resumed_steps') == total for x in t)}; max abs diff vs an unbroken run {worst}"
    )
    return what, len(t), outcomes, "all survive (adapter diff <= 1e-6)", all(x["survived"] for x in t)


def row_kill_snapshot(d: dict[str, Any]) -> Row:
    t = d["trials"]
    what = (
        f"Kill snapshot: SIGKILL during `write_snapshot` of {d['rows']:,} records next to a previous snapshot, "
        f"delays spread over an unkilled write ({d['unkilled_write_s']:.2f} s)"
    )
    outcomes = (
        f"{_survived(t)}; killed mid-write {sum(not x['finished_before_kill'] for x in t)} (temp dirs left "
        f"{sum(len(x['temp_dirs_left']) for x in t)}), finished first {sum(x['finished_before_kill'] for x in t)}; "
        f"half-written visible {sum(len(x['half_written_visible']) for x in t)}; previous changed "
        f"{sum(not x['previous_unchanged'] for x in t)}"
    )
    goal = "no half-written snapshot visible; previous untouched"
    return what, len(t), outcomes, goal, all(x["survived"] for x in t)


def row_kill_logging(d: dict[str, Any]) -> Row:
    t = d["trials"]
    runs = [r for x in t for r in x["runs"]]
    what = (
        "Kill logging: SIGKILL of a process in `claim_run` or logging a step every 20 ms through `StepLogger` "
        f"(sqlite store), at 0-{d['window_s']:.1f} s from the claim; then `mark_orphaned_runs`"
    )
    outcomes = (
        f"{_survived(t)}; runs KILLED with killed_reason "
        f"{sum(r['status'] == 'KILLED' and bool(r['killed_reason']) for r in runs)}, left RUNNING "
        f"{sum(r['status'] == 'RUNNING' for r in runs)}, FINISHED {sum(r['status'] == 'FINISHED' for r in runs)}; "
        f"killed before a run existed {sum(not x['runs'] for x in t)}"
    )
    goal = "every run KILLED with a reason (none RUNNING or FINISHED)"
    return what, len(t), outcomes, goal, all(x["survived"] for x in t)


def row_kill_promotion(d: dict[str, Any]) -> Row:
    t = d["trials"]
    follow = [x["following_promote_s"] for x in t if x.get("following_version") not in (None, "None")]
    what = (
        "Kill promotion: SIGKILL during `promote()` (lock, `log_model`, `register_model`, alias) of a tiny adapter, "
        f"sqlite registry, delays spread over the latest unkilled one ({d['unkilled_promote_s']:.1f} s for the first); "
        "then a promotion in a fresh process"
    )
    outcomes = (
        f"{_survived(t)}; versions without adapter files {sum(len(x['versions_without_adapter']) for x in t)} "
        f"(registry checked after each kill; {d['final_versions']} versions at the end, "
        f"{len(d['final_versions_without_adapter'])} without); killed run FINISHED "
        f"{sum(x['killed_run_status'] == 'FINISHED' for x in t)}; following promotion succeeded {len(follow)} of "
        f"{len(t)}{f' (its promote() {max(follow):.1f} s at most)' if follow else ''}; kill landed after the "
        f"version was registered {sum(x['registered_by_killed'] > 0 for x in t)}, after promote() returned "
        f"{sum(x['finished_before_kill'] for x in t)}"
    )
    goal = "every version has its adapter files; run not FINISHED; next promotion succeeds"
    return what, len(t), outcomes, goal, all(x["survived"] for x in t) and not d["final_versions_without_adapter"]


def row_outage_mlflow(d: dict[str, Any]) -> Row:
    what = (
        f"MLflow down: `mlflow server` stopped for {d['outage_s_asked']:.0f} s then started again on its port, "
        f"while `StepLogger` logs a step every {OUTAGE_STEP_S} s"
    )
    outcomes = (
        f"down {d['down_s']:.0f} s ({d['steps_during_outage']} steps logged while down); slowest step call "
        f"{1000 * d['max_step_call_s']:.2f} ms; {d['pending_when_logging_ended']:,} metrics still buffered when "
        f"logging stopped; metrics arrived {d['metrics_arrived']:,} of {d['metrics_logged']:,} after flush "
        f"({d['flush_s']:.1f} s; duplicates {d['duplicate_metrics']})"
    )
    if d["flush_error"]:
        outcomes += f"; flush gave up: {d['flush_error']}"
    met = d["max_step_call_s"] < OUTAGE_STEP_S and d["metrics_arrived"] == d["metrics_logged"]
    return what, f"{d['steps']:,} steps", outcomes, "slowest step call < 0.1 s; all metrics arrive", met


def row_outage_label_studio(d: dict[str, Any]) -> Row:
    what = (
        f"Label Studio restarted: stopped mid-pull (full pull of the {d['tasks_seeded']}-task demo project, "
        f"outage_patience_s 300) for {d['outage_s_asked']:.0f} s, then started again on its port"
    )
    completed = "yes" if d["pull_completed"] else f"NO ({d['pull_error']})"
    outcomes = (
        f"down {d['down_s']:.0f} s, stopped mid-pull: {'yes' if d['stopped_mid_pull'] else 'NO'} (502s the pull "
        f"rode out: {d['answered_502_while_down']}); pull completed: {completed}; {d['pull_tasks']} tasks vs "
        f"{d['clean_tasks']} in a clean pull, rows identical: {'yes' if d['same_rows_as_clean'] else 'NO'}"
    )
    met = (
        d["stopped_mid_pull"]
        and d["down_s"] >= 60
        and d["pull_completed"]
        and d["pull_tasks"] == d["clean_tasks"]
        and d["same_rows_as_clean"]
    )
    return what, 1, outcomes, "pull rides out >= 60 s down; same tasks as a clean pull", met


def row_malformed(d: dict[str, Any]) -> Row:
    c = d["counts"]
    what = (
        f"Malformed Label Studio export tasks (bench/malformed_tasks.py, seed {d['seed']}) through the export-file "
        "path of `lora-pipeline ingest --export-file`"
    )
    outcomes = ", ".join(f"{k.replace('_', ' ')} {c[k]:,}" for k in c if k != "tasks")
    met = c["tracebacks"] == 0 and c["silently_dropped"] == 0
    return what, f"{c['tasks']:,}", outcomes, "tracebacks 0, silently dropped 0", met


def row_secrets(d: dict[str, Any]) -> Row:
    what = (
        "Secret hits: canary credentials (LS token, passwords in LABEL_STUDIO_URL and MLFLOW_TRACKING_URI) through a "
        "whole `lora-pipeline run`; every file it wrote and its output grepped (tests/test_secrets_canary.py)"
    )
    found = [t for t in d["tests"] if "::test_canary_credentials" in t["test"]]
    test = next((t for t in found if "hits" in t and (t["hits"] or t["outcome"] == "passed")), None)
    if test is None:  # it failed before or during its grep (or in setup): no count, and the reason
        why = next((t["error"][-300:] for t in found if "error" in t), d["summary"])
        return what, "-", f"no count: the test failed before its grep ({why})", "0 hits", False
    hits = test["hits"]
    outcomes = f"hits {len(hits)}{': ' + '; '.join(hits) if hits else ''} (the count is the test's own `hits` list)"
    return what, f"{test['files_searched']:,} files + output", outcomes, "0 hits", not hits


def row_concurrent(d: dict[str, Any]) -> Row:
    what = "Concurrent promotions: two processes promote at the same moment (tests/test_registry.py -k concurrent)"
    cases = [t for t in d["tests"] if t["when"] == "call" and "concurrent" in t["test"]]
    if not cases:
        return what, "-", f"no case ran ({d['summary']})", "one winner each", False
    names = {"fresh": "fresh SQLite store", "initialised": "MLflow server"}
    outcomes = "; ".join(
        f"{names.get(t['test'].rsplit('[', 1)[-1].rstrip(']'), t['test'])}: {t.get('winners', '?')} winner(s), "
        f"test {t['outcome']}"
        for t in cases
    )
    met = all(t.get("winners") == 1 for t in cases)
    return what, f"{len(cases)} cases x 2 processes", outcomes, "one winner each", met


ROWS: dict[str, Callable[[dict[str, Any]], Row]] = {
    "kill_training": row_kill_training,
    "kill_snapshot": row_kill_snapshot,
    "kill_logging": row_kill_logging,
    "kill_promotion": row_kill_promotion,
    "outage_mlflow": row_outage_mlflow,
    "outage_label_studio": row_outage_label_studio,
    "malformed": row_malformed,
    "secrets": row_secrets,
    "concurrent": row_concurrent,
}
SECTIONS = tuple(ROWS)


def table(sections: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per section that ran (a section that broke is a row that says so, not met)."""
    out = []
    for name, make in ROWS.items():
        d = sections.get(name)
        if d is None:
            continue
        if "error" in d:
            row: Row = (name, "-", f"bench error: {d['error']}", "", False)
        else:
            row = make(d)
        out.append(dict(zip(("what", "tried", "outcomes", "goal", "met"), row, strict=True)) | {"section": name})
    return out


def _cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def _yes(ok: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "-"}[ok]


def markdown(raw: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = raw["machine"]
    lines = [
        "# Reliability: nothing lost, nothing leaked, nothing executed (issue 17)\n",
        f"`{raw['command']}` on {m['date_utc']} (UTC): {m['cpus']} CPUs shared with other work, load average "
        f"(1, 5, 15 min) {' / '.join(map(str, m['load_start']))} at start, {' / '.join(map(str, m['load_end']))} at end; Python {m['python']}, {m['platform']}; "
        f"{raw['wall_s'] / 60:.1f} min in all. Kill points drawn with --seed {raw['seed']}.\n",
        "| # | what was tried | tried | outcomes | goal | met |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {i} | {_cell(r['what'])} | {_cell(r['tried'])} | {_cell(r['outcomes'])} | {_cell(r['goal'])} | "
        f"{_yes(r['met'])} |"
        for i, r in enumerate(rows, 1)
    ]
    lines += [
        "",
        "How each row is measured: the module docstring of bench/reliability_report.py. Per-trial numbers (kill "
        "points, delays, return codes, run states, versions, test outputs): reliability.json.",
        "",
        f"Reproduce: `.venv/bin/python bench/reliability_report.py --seed {raw['seed']}` (add `--quick` for a short "
        "run, `--skip-tests` to leave out the two pytest rows).",
    ]
    return "\n".join(lines) + "\n"


def load_average() -> list[float]:
    """The 1, 5 and 15 min load averages, rounded: the header reports them at start and at end."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts() -> dict[str, Any]:
    """The header's machine facts at start (main adds load_end when the sections are done)."""
    return {
        "cpus": os.cpu_count(),
        "load_start": load_average(),
        "date_utc": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def write_report(out: Path, raw: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Write reliability.json (the table, then the raw numbers) and reliability.md into `out`; the markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.json").write_text(json.dumps({"table": rows, **raw}, indent=2, default=str))
    text = markdown(raw, rows)
    (out / "reliability.md").write_text(text)
    return text
