"""Train: a snapshot's train rows in, a LoRA adapter (safetensors + manifest) out.

Owns tokenization into packed batches, the loss, model loading and LoRA attachment (`modeling`),
checkpoints and resume, DDP glue, the recipe (`recipe.train_adapter`), throughput/MFU accounting,
the adapter manifest and merging an adapter into its base (`merge`). `results` holds the plain
data it reports (StepLog, TrainResult) for tracking and plots without torch.

May import: `pipeline.validate` (the snapshot), `pipeline.config`, `pipeline.chat_format`.
Never MLflow, Prefect or a later stage (evaluate, track, demo).
"""
