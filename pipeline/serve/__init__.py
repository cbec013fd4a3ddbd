"""Serve: trained adapters answering prompts.

Owns resolving an adapter reference (a directory, or `models:/NAME@ALIAS` / `models:/NAME/VERSION` in
the MLflow registry) to local files plus the base it was trained on (`adapter_source`), chat generation
with the training chat template (`chat`, behind `lora-pipeline chat`), and the OpenAI-compatible server
behind `lora-pipeline serve`: the mixed-adapter batching engine (`engine`), the registry-following adapter
pool with its checks, leases and LRU eviction (`adapter_pool`), the FastAPI routes (`server`, `cli_serve`),
the vLLM engine behind the same routes and pool (`vllm_engine`: vLLM's server as a child process, adapters
through its runtime LoRA API), and the serving-aware promotion check (`canary`).

May import: `pipeline.train` model loading and manifest, `pipeline.track.registry`, `pipeline.config`,
`pipeline.chat_format`. Never Prefect, `flows/` or the demo.
"""
