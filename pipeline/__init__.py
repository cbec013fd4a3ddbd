"""lora-pipeline: Label Studio annotations to trusted LoRA adapters.

One room per stage, in the order data flows (docs/architecture.md has the diagram):

- `ingest/`    Label Studio: server, client, pull (incremental), records, reconciliation, feedback.
- `validate/`  checks (pandera schemas in `schemas/`), report, drift, the frozen split, the snapshot.
- `train/`     chat formatting into tokens, packing, loss, checkpoints, DDP, the LoRA recipe, merge.
- `evaluate/`  forgetting (lm-eval harness + our backend), task eval, paired intervals, gate, plots.
- `track/`     MLflow runs, the model registry, promotion.
- `serve/`     adapters answering prompts: registry/dir resolution, chat generation (`lora-pipeline chat`).
- `demo/`      the offline demo: tiny model, sample data, runner (no other room imports it).

`config.py`, `chat_format.py`, `jsonl.py` and `cli.py` are shared by all rooms. Imports point
downstream-to-upstream only (a later stage may import an earlier one, never the reverse), no room
imports `flows/` or Prefect, and ingest/validate never import torch: tests/test_layering.py checks it.
"""
