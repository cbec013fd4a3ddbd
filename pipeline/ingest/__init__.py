"""Ingest: everything that talks to Label Studio.

Owns the local server and the HTTP client (with retries), project set-up and labeling config,
the incremental pull with its task store, the annotation winner rule (`records`), the
reconciliation counts and the export-file reader. (Feedback to annotators is written by
`validate.feedback`: it needs the checks' fix hints, and goes out through this room's client.)

May import: `pipeline.config`, `pipeline.jsonl`. Never torch, transformers, MLflow, Prefect or a
later stage (validate, train, evaluate, track, demo).
"""
