"""Evaluate: an adapter in, an assessment of it out.

Owns the forgetting check (base vs adapter on the general suite through lm-eval, with our
batched backend), held-out task evaluation, paired bootstrap intervals, the gate rules, the
plots and the general suite itself.

May import: `pipeline.train` model loading, scoring and manifest (never the recipe),
`pipeline.config`, `pipeline.chat_format`. Never MLflow, Prefect, `pipeline.track` or the demo.
"""
