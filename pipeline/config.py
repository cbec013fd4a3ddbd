"""One typed config per run, mirrored by `configs/default.yaml`; endpoints and secrets come from the environment.

Every model forbids unknown keys so that a typo in YAML fails at load time with the key's name,
and cross-field checks raise `ValueError` naming the knob and the fix (STYLE.md, PEFT-style).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# LoRA target presets: `qv` is the LoRA paper's choice; `all-linear` is PEFT's own keyword.
TARGET_PRESETS: dict[str, list[str] | str] = {
    "qv": ["q_proj", "v_proj"],
    "all-linear": "all-linear",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LabelStudioConfig(_Strict):
    """Which Label Studio project to pull and what its labeling config must offer."""

    project_title: str = "lora-pipeline demo"
    # When set, the project is looked up by id (and must exist); otherwise by title.
    project_id: int | None = Field(default=None, ge=1)
    categories: tuple[str, ...] = ("schedules", "tickets", "lost_property", "accessibility")
    page_size: int = Field(default=100, ge=1, le=1000)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("categories")
    @classmethod
    def _categories_unique(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("labelstudio.categories must list at least one category")
        if len(set(v)) != len(v):
            raise ValueError(f"labelstudio.categories has duplicates: {list(v)}")
        return v


class DataConfig(_Strict):
    """How the validated snapshot is split and tokenized."""

    eval_fraction: float = Field(default=0.1, gt=0, lt=1)
    # Examples longer than this (prompt + response, in base-model tokens) stop the run
    # with their task ids instead of being truncated silently.
    max_length: int = Field(default=256, ge=16)


class LoraConfig(_Strict):
    """The adapter: rank, scaling, dropout and which modules get LoRA matrices."""

    r: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # A preset name (`qv`, `all-linear`) or an explicit list of module names.
    target_modules: str | tuple[str, ...] = "qv"

    @field_validator("target_modules")
    @classmethod
    def _known_preset(cls, v: str | tuple[str, ...]) -> str | tuple[str, ...]:
        if isinstance(v, str) and v not in TARGET_PRESETS:
            raise ValueError(
                f"lora.target_modules={v!r} is not a preset; use one of {sorted(TARGET_PRESETS)} "
                "or an explicit list of module names such as [q_proj, v_proj]"
            )
        if not isinstance(v, str) and not v:
            raise ValueError("lora.target_modules is an empty list; name at least one module")
        return v

    def peft_target_modules(self) -> list[str] | str:
        """The value PEFT's `LoraConfig.target_modules` takes."""
        if isinstance(self.target_modules, str):
            return TARGET_PRESETS[self.target_modules]
        return list(self.target_modules)


class TrainConfig(_Strict):
    """Optimization knobs of the training recipe."""

    learning_rate: float = Field(default=2e-4, gt=0, le=1)
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=8, ge=1)
    grad_accum_steps: int = Field(default=1, ge=1)
    warmup_fraction: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    max_grad_norm: float = Field(default=1.0, gt=0)
    seed: int = 0
    # "auto" picks CUDA when present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Stop after this many optimizer steps (None: run all epochs); handy for smoke runs.
    max_steps: int | None = Field(default=None, ge=1)


class EvalConfig(_Strict):
    """The forgetting check and task evaluation."""

    # None: the built-in general suite packaged with the project; else a directory with the same files.
    general_suite: str | None = None
    batch_size: int = Field(default=16, ge=1)


class MlflowConfig(_Strict):
    experiment: str = "lora-pipeline"


class PipelineConfig(_Strict):
    """Everything one pipeline run needs, apart from endpoints and secrets (see `Settings`)."""

    # A Hugging Face model id or a local directory; always loaded through `from_pretrained`.
    base_model: str = "demo-output/tiny-model"
    labelstudio: LabelStudioConfig = LabelStudioConfig()
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    mlflow: MlflowConfig = MlflowConfig()

    def to_flat_dict(self) -> dict[str, Any]:
        """Dotted keys -> values, for logging as MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.model_dump(mode="json"))
        return out

    def fingerprint(self) -> str:
        """A short stable hash of the config, for manifests and run names."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def load_config(path: str | Path | None = None, **overrides: Any) -> PipelineConfig:
    """Load a YAML config (None: defaults) and apply top-level overrides such as base_model=..."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        loaded = yaml.safe_load(p.read_text())
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ValueError(f"config file {p} must hold a mapping at the top level, got {type(loaded).__name__}")
        data = loaded
    data.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineConfig.model_validate(data)


class Settings(BaseSettings):
    """Endpoints and secrets, read from the environment (or a `.env` file); never logged."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    label_studio_url: str = Field(default="http://127.0.0.1:8080", validation_alias="LABEL_STUDIO_URL")
    label_studio_api_key: SecretStr | None = Field(default=None, validation_alias="LABEL_STUDIO_API_KEY")
    mlflow_tracking_uri: str = Field(default="sqlite:///mlflow.db", validation_alias="MLFLOW_TRACKING_URI")

    def require_label_studio_key(self) -> str:
        """The Label Studio API key, or a one-line error saying how to provide it."""
        if self.label_studio_api_key is None or not self.label_studio_api_key.get_secret_value():
            raise ValueError(
                "LABEL_STUDIO_API_KEY is not set; copy the access token from Label Studio's "
                "Account & Settings page into that environment variable"
            )
        return self.label_studio_api_key.get_secret_value()
