"""Known, harmless warnings of the libraries we call, kept off the user's terminal (each with why).

`lora-pipeline` installs these filters before any command runs, so `make demo` and `lora-pipeline run`
print what the pipeline says, not what its dependencies say about themselves. Anything not listed here
still shows. Each entry names the module that warns and the start of its message.
"""

from __future__ import annotations

import logging
import warnings

# (category, message regex (matched at the start), module regex, why it is harmless here)
KNOWN_WARNINGS: tuple[tuple[type[Warning], str, str, str], ...] = (
    (
        FutureWarning,
        r"`is_gradient_checkpointing` is deprecated",
        r"transformers\.modeling_utils",
        "PEFT 0.21 reads the deprecated alias when it wraps a model; nothing for a user to change",
    ),
    (
        UserWarning,
        r"The specified dataset source can be interpreted in multiple ways",
        r"mlflow\.data\.dataset_source_registry",
        "MLflow registers LocalArtifactDatasetSource twice and picks the newest; the snapshot source is a local path",
    ),
    (
        UserWarning,
        r"Hint: Inferred schema contains integer column\(s\)",
        r"mlflow\.types\.utils",
        "the snapshot's integer columns (task id, counts) never hold missing values",
    ),
)
# Loggers that repeat advice meant for their own CLI on every evaluation.
QUIET_LOGGERS: dict[str, int] = {
    "lm_eval.api.task": logging.ERROR,  # "Custom kwargs can be passed to `--metadata` in console" per task
}


def silence_library_noise() -> None:
    """Install the filters above (idempotent: `warnings.filterwarnings` replaces an identical filter)."""
    for category, message, module, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
