"""Prefect wiring of the pipeline's stages; the stage code lives in `pipeline/`."""
