"""Imported by a warm process in tests/test_warm_worker.py: sets an environment variable at import, as MLflow does."""

import os

os.environ.setdefault("_LORA_PIPELINE_TEST_SESSION", "set-at-import")
