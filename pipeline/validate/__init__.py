"""Validate: pulled rows in, a content-hashed snapshot with a frozen train/eval split out.

Owns the row checks (text, token bounds and lengths, chat-template token flow), dataset checks
(balance, near-duplicates, drift), the validation report, the split and the snapshot on disk;
`prepare.prepare_dataset` runs them in order; `feedback` marks failing tasks in Label Studio. The pandera schemas live in `schemas/`.

May import: `pipeline.ingest`, `pipeline.config`, `pipeline.chat_format` (tokenizer only, loaded
lazily), `schemas`. Never torch, MLflow, Prefect or a later stage (train, evaluate, track, demo).
"""
