"""Track: MLflow runs, the model registry and promotion.

Owns the run (params, tags, dataset lineage, step metrics), registry aliases, and `promotion`,
which runs the evaluation and sets the alias when the gate passes.

May import every earlier stage. `tracking` itself stays free of torch (it reads `train.results`).
Never Prefect or the demo.
"""
