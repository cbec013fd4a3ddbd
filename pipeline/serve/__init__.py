"""Serve: a trained adapter answering prompts.

Owns resolving an adapter reference (a directory, or `models:/NAME@ALIAS` / `models:/NAME/VERSION` in
the MLflow registry) to local files plus the base it was trained on (`adapter_source`), and chat
generation with the training chat template (`chat`, behind `lora-pipeline chat`).

May import: `pipeline.train` model loading and manifest, `pipeline.track.registry`, `pipeline.config`,
`pipeline.chat_format`. Never Prefect, `flows/` or the demo.
"""
