"""lora-pipeline: Label Studio annotations to trusted LoRA adapters."""
