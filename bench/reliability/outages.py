"""Section 2: outages ridden (MLflow server stopped and restarted; Label Studio restarted mid-pull)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from bench.reliability.common import log

OUTAGE_STEP_S, OUTAGE_LEAD_S, OUTAGE_TAIL_S = 0.1, 10.0, 10.0


def outage_mlflow(work: Path, outage_s: float) -> dict[str, Any]:
    from mlflow.tracking import MlflowClient

    from pipeline.config import load_config
    from pipeline.ingest.server import free_port
    from pipeline.track.outage import TrackingUnavailable
    from pipeline.track.step_logger import StepLogger
    from pipeline.train.results import StepLog
    from tests.conftest import start_mlflow_server, stop_mlflow_server

    root = work / "mlflow-outage"
    root.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    procs = [start_mlflow_server(root, port)]
    events: dict[str, float] = {}
    errors: list[BaseException] = []

    def outage() -> None:
        try:
            time.sleep(OUTAGE_LEAD_S)
            events["stop"] = time.monotonic()
            stop_mlflow_server(procs[0])
            events["down"] = time.monotonic()
            time.sleep(outage_s)
            events["restart"] = time.monotonic()
            procs.append(start_mlflow_server(root, port))
            events["up"] = time.monotonic()
        except BaseException as e:
            errors.append(e)

    try:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("reliability-outage")).info.run_id
        steps = StepLogger(uri, run_id)  # as flows/train_tasks.py
        calls: list[tuple[float, float]] = []  # (monotonic at call, seconds the call took)
        controller = threading.Thread(target=outage, daemon=True)
        controller.start()
        step, tick = 0, time.monotonic()
        while controller.is_alive() or time.monotonic() < events.get("up", 0.0) + OUTAGE_TAIL_S:
            step += 1
            at = time.monotonic()
            t = time.perf_counter()
            steps(StepLog(step=step, epoch=0, loss=1.0 / step, learning_rate=1e-4, grad_norm=0.5, tokens_per_s=1e3))
            calls.append((at, time.perf_counter() - t))
            tick += OUTAGE_STEP_S
            time.sleep(max(0.0, tick - time.monotonic()))
        if errors:
            raise errors[0]
        pending_at_end = steps.pending
        t = time.perf_counter()
        flush_error = None
        try:
            steps.flush(timeout_s=load_config().mlflow.outage_patience_s)
        except TrackingUnavailable as e:  # what arrived is still counted below: the outcome this row reports
            flush_error = str(e)
        flush_s = time.perf_counter() - t
        failures, sent = steps.failures, steps.sent
        steps.close()
        names = (
            "train/loss",
            "train/learning_rate",
            "train/grad_norm",
            "train/step_tokens_per_s",
            "train/padding_frac",
        )
        arrived, duplicates = 0, 0
        for name in names:
            history = [m.step for m in client.get_metric_history(run_id, name)]
            arrived += len(set(history) & set(range(1, step + 1)))
            duplicates += len(history) - len(set(history))
    finally:
        for proc in procs:
            stop_mlflow_server(proc)
    during = [s for at, s in calls if events["stop"] <= at <= events["up"]]
    return {
        "outage_s_asked": outage_s,
        "down_s": events["up"] - events["stop"],
        "stopping_s": events["down"] - events["stop"],
        "restarting_s": events["up"] - events["restart"],
        "steps": step,
        "metrics_logged": step * len(names),
        "metrics_arrived": arrived,
        "duplicate_metrics": duplicates,
        "max_step_call_s": max(s for _, s in calls),
        "max_step_call_during_outage_s": max(during) if during else None,
        "steps_during_outage": len(during),
        "pending_when_logging_ended": pending_at_end,
        "flush_s": flush_s,
        "flush_error": flush_error,
        "send_failures": failures,
        "sent": sent,
    }


def outage_label_studio(work: Path, outage_s: float) -> dict[str, Any]:
    from pipeline.config import LabelStudioConfig, Settings
    from pipeline.demo.runner import seed_project
    from pipeline.ingest.client import connect
    from pipeline.ingest.pull import Pull, pull_project
    from pipeline.ingest.server import LocalLabelStudio
    from tests.test_ingest_resilience import FlakyProxy

    demo = LabelStudioConfig()
    t = time.perf_counter()
    # Its first start runs migrations: minutes on 2 busy cores, past the 240 s default.
    with LocalLabelStudio(data_dir=work / "labelstudio", startup_timeout_s=900) as ls:
        start_s = time.perf_counter() - t
        seeded = seed_project(connect(ls.url, ls.token), demo.project_title, demo.categories)
        log(f"label studio up in {start_s:.0f} s, {seeded.imported} tasks seeded")
        cfg = LabelStudioConfig(
            project_id=seeded.project.id,
            categories=demo.categories,
            outage_patience_s=300.0,
            # As tests/test_ingest_outage.py: small requests, one at a time, so that the pull is still running.
            export_chunk_size=2,
            workers=1,
            backoff_s=0.05,
            retries=2,
        )
        clean = pull_project(Settings(LABEL_STUDIO_URL=ls.url, LABEL_STUDIO_API_KEY=ls.token), cfg, full=True)
        result: dict[str, Any] = {}
        with FlakyProxy(ls.url, fail_rate=0.0, stall_rate=1.0, stall_s=0.25) as proxy:
            settings = Settings(LABEL_STUDIO_URL=proxy.url, LABEL_STUDIO_API_KEY=ls.token)

            def pull() -> None:
                started = time.monotonic()
                try:
                    result["pull"] = pull_project(settings, cfg, full=True)
                except BaseException as e:  # reported as the outcome
                    result["error"] = f"{type(e).__name__}: {e}"
                result["pull_s"] = time.monotonic() - started

            worker = threading.Thread(target=pull, daemon=True)
            worker.start()
            deadline = time.monotonic() + 120
            while proxy.requests < 8 and time.monotonic() < deadline:
                time.sleep(0.05)
            requests_before = proxy.requests
            mid_pull = worker.is_alive()
            ls.stop()
            down_since = time.monotonic()
            time.sleep(outage_s)
            alive_after_outage = worker.is_alive()
            ls.start()
            down_s = time.monotonic() - down_since
            worker.join(timeout=900)
            joined = not worker.is_alive()
    got = result.get("pull")
    same_rows = isinstance(got, Pull) and all(
        getattr(got.normalized, frame).equals(getattr(clean.normalized, frame))
        for frame in ("records", "unusable", "quarantined")
    )
    return {
        "label_studio_start_s": start_s,
        "tasks_seeded": seeded.imported,
        "outage_s_asked": outage_s,
        "down_s": down_s,
        "stopped_mid_pull": mid_pull,
        "requests_before_stop": requests_before,
        "pull_alive_after_outage": alive_after_outage,
        "answered_502_while_down": proxy.upstream_down,
        "pull_completed": joined and isinstance(got, Pull),
        "pull_error": result.get("error"),
        "pull_s": result.get("pull_s"),
        "clean_tasks": clean.normalized.tasks_seen,
        "pull_tasks": got.normalized.tasks_seen if isinstance(got, Pull) else None,
        "same_rows_as_clean": same_rows,
    }
