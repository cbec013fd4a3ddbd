"""The libraries' known warnings stay off the terminal; anything else still shows."""

from __future__ import annotations

import logging
import warnings

import pytest

from pipeline.library_noise import KNOWN_WARNINGS, QUIET_LOGGERS, silence_library_noise


def _emitted(category: type[Warning], message: str, module: str) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        silence_library_noise()
        warnings.warn_explicit(message, category, f"{module.replace('.', '/')}.py", 1, module=module)
    return seen


@pytest.mark.parametrize(("category", "message", "module", "why"), KNOWN_WARNINGS)
def test_a_known_library_warning_is_silenced(category: type[Warning], message: str, module: str, why: str) -> None:
    text = message.replace("\\", "") + " and the rest of the library's sentence"
    assert _emitted(category, text, module.replace("\\", "")) == []
    assert why  # every entry says why it is harmless


def test_the_same_message_from_our_code_or_another_warning_still_shows() -> None:
    assert len(_emitted(FutureWarning, "`is_gradient_checkpointing` is deprecated", "pipeline.train.recipe")) == 1
    assert len(_emitted(UserWarning, "something else went wrong", "mlflow.types.utils")) == 1


def test_quiet_loggers_keep_errors() -> None:
    silence_library_noise()
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        assert not logger.isEnabledFor(logging.WARNING) and logger.isEnabledFor(max(level, logging.ERROR))
