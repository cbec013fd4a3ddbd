"""One typed config per run, mirrored by `configs/default.yaml`; endpoints and secrets come from the environment.

Every model forbids unknown keys so that a typo in YAML fails at load time with the key's name,
and cross-field checks raise `ValueError` naming the knob and the fix (STYLE.md, PEFT-style).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.redact import strip_userinfo

# lm-eval model backends: ours, registered under this name by pipeline/evaluate/lm_eval_backend.py, and
# lm-eval's stock HFLM ("hf"), the reference. Defined here so the harness and the backend both import it
# from below instead of from each other.
LM_EVAL_BACKEND = "lora-pipeline"
EvalBackend = Literal["lora-pipeline", "hf"]

# LoRA target presets: `qv` is the LoRA paper's choice; `all-linear` is PEFT's own keyword.
TARGET_PRESETS: dict[str, list[str] | str] = {
    "qv": ["q_proj", "v_proj"],
    "all-linear": "all-linear",
}


# What an unconfigured run trains on: a small instruct model a user can download from the hub.
# The demo and the tests build their own tiny model offline and name its directory instead.
DEFAULT_BASE_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """How the base model, its tokenizer and adapters may be loaded: tensors-only formats unless opted in."""

    # Load a base model whose weights exist only as a pickle (pytorch_model.bin). Unpickling a file can run
    # code from it, so by default only safetensors load; turn this on only for weights you trust.
    allow_pickle_weights: bool = False
    # Run Python code shipped with a hub model or tokenizer (modeling_*.py); only for repositories you trust.
    trust_remote_code: bool = False


# The default loading permissions (frozen, so safe to share as a default argument): safetensors only, no remote code.
SAFE_LOADING = ModelConfig()


class LabelStudioConfig(_Strict):
    """Which Label Studio project to pull and what its labeling config must offer."""

    project_title: str = "lora-pipeline demo"
    # When set, the project is looked up by id (and must exist); otherwise by title.
    project_id: int | None = Field(default=None, ge=1)
    categories: tuple[str, ...] = ("schedules", "tickets", "lost_property", "accessibility")
    page_size: int = Field(default=100, ge=1, le=1000)
    timeout_s: float = Field(default=30.0, gt=0)
    # Tasks per export request of a full pull; Django refuses more than 1000 query fields. Requests are also
    # capped to a 7000-byte request line (nginx default 8 KiB); a 414 from a stricter server halves them.
    export_chunk_size: int = Field(default=900, ge=1, le=900)
    # Concurrent requests of a full pull (chunks are fetched in parallel, kept in id order).
    workers: int = Field(default=2, ge=1, le=16)
    # Retries per request on 429, 5xx and dropped connections, with exponential backoff from backoff_s.
    retries: int = Field(default=5, ge=0, le=20)
    backoff_s: float = Field(default=0.5, ge=0)
    # A server that is down (refused connections, 502/503/504) is waited for this long per request, past
    # `retries`: a Label Studio restart during a pull costs time, not a failed run. 0 turns it off.
    outage_patience_s: float = Field(default=90.0, ge=0)
    # Which annotation wins per task: ground truth, else `latest` submitted, or the `majority` category.
    annotation_rule: Literal["latest", "majority"] = "latest"
    # Fetch only tasks updated since the last snapshot's watermark (minus the overlap); --full ignores it.
    incremental: bool = True
    watermark_overlap_s: float = Field(default=2.0, ge=0)
    # Mark tasks that failed validation in Label Studio (task meta + a saved view with this title).
    feedback: bool = True
    feedback_view: str = "needs fix"

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
    # Tokenized examples are cached as Arrow by (rows, tokenizer, chat template, max_length), so a sweep
    # or a rerun tokenizes once (pipeline/train/tokenized.py). Dir None: $XDG_CACHE_HOME/lora-pipeline/tokenized.
    tokenize_cache: bool = True
    tokenize_cache_dir: str | None = None
    # Worker processes for tokenizing (used from 10,000 rows up).
    tokenize_num_proc: int = Field(default=1, ge=1)


class LoraConfig(_Strict):
    """The adapter: rank, scaling, dropout and which modules get LoRA matrices."""

    r: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1)
    # A preset name (`qv`, `all-linear`) or an explicit list of module names.
    target_modules: str | tuple[str, ...] = "qv"
    # DoRA: learn a magnitude vector per output feature on top of the low-rank direction update.
    use_dora: bool = False
    # rsLoRA: scale the update by alpha / sqrt(r) instead of alpha / r (stable at high ranks).
    use_rslora: bool = False
    # QLoRA: "nf4" loads the frozen base in 4-bit NF4 via bitsandbytes (CUDA only); "none" keeps it in bf16/fp32.
    quantize: Literal["none", "nf4"] = "none"

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


class ReplayConfig(_Strict):
    """Replay of general text during LoRA training, a standard mitigation of catastrophic forgetting.

    Replay rows are plain language-modelling rows (loss on every token) mixed into the training batches,
    `ratio` of them per task row, drawn by `train.seed`. Texts that contain a general-suite text or question
    (the forgetting check's own items) are never replayed (pipeline/train/replay.py); see docs/replay.md.
    """

    # Replay rows per task row; 0 turns replay off.
    ratio: float = Field(default=0.0, ge=0, le=10)
    # A .txt file (one text per non-empty line) or a .jsonl file ({"text": ...} per line). "base:NAME" is the
    # file NAME inside the base model's directory: a local base can ship the general text it was pretrained
    # on, as the demo base does (general_corpus.jsonl).
    source: str = "base:general_corpus.jsonl"
    # How a replay token is scored: "ce", the cross-entropy of the replay text's next token (more pretraining
    # on it), or "kl", KL(base || adapter) of the next-token distributions, the base being the same model with
    # the adapter disabled: zero at the base, so it only pulls back where the adapter moved general text
    # (one more forward per replay row, without gradient). See docs/replay.md.
    loss: Literal["ce", "kl"] = "ce"
    # A replay token's loss counts `weight` times a task token's (replay rows are often longer than responses).
    weight: float = Field(default=1.0, gt=0, le=10)

    @field_validator("source")
    @classmethod
    def _source_named(cls, v: str) -> str:
        if not v.strip() or v.strip() == "base:":
            raise ValueError("train.replay.source is empty; name a .txt/.jsonl file or base:FILE in the base model")
        if not v.endswith((".txt", ".jsonl")):
            raise ValueError(f"train.replay.source={v!r} must be a .txt (one text per line) or .jsonl file")
        return v


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
    # Pack each micro-batch's examples into rows (attention and positions stay inside each example)
    # instead of padding every example to the longest one.
    packing: bool = True
    # Recompute activations in the backward pass: less memory, about a third more compute.
    gradient_checkpointing: bool = False
    # Save adapter + optimizer + scheduler + RNG + data position every N optimizer steps (None: never).
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    # How many of the most recent checkpoints to keep on disk.
    keep_checkpoints: int = Field(default=2, ge=1)
    # Held-out loss every N optimizer steps (None: only at the end of each epoch).
    eval_every_steps: int | None = Field(default=None, ge=1)
    # Processes (one GPU each) of one training run: >1 makes the train flow launch the DDP path with torchrun.
    gpus: int = Field(default=1, ge=1, le=64)
    # Replay of general text mixed into the batches (off by default; see ReplayConfig).
    replay: ReplayConfig = ReplayConfig()


class EvalConfig(_Strict):
    """The forgetting check and task evaluation."""

    # None: the built-in general suite packaged with the project; else a directory with the same files.
    general_suite: str | None = None
    batch_size: int = Field(default=16, ge=1)
    # lm-evaluation-harness tasks for the forgetting check: the built-in suite's tasks (offline) and/or
    # any standard task name (hellaswag, arc_easy, mmlu, ...; those need the dataset hub).
    tasks: tuple[str, ...] = ("general_suite_mc", "general_suite_ppl")
    num_fewshot: int = Field(default=0, ge=0)
    # lm-eval model backend: "lora-pipeline" batches requests and scores each shared context once
    # (pipeline/evaluate/lm_eval_backend.py); "hf" is lm-eval's stock HFLM, kept as the reference.
    backend: EvalBackend = LM_EVAL_BACKEND
    # Cap documents per task (None: all); standard tasks can have tens of thousands.
    limit: int | None = Field(default=None, ge=1)
    # Paired bootstrap on every adapter-minus-base delta.
    bootstrap_samples: int = Field(default=1000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    seed: int = 0
    # Held-out examples whose greedy generations are scored (exact match, ROUGE-L) and shown side by side
    # (None: every held-out row, what the gate's task_quality rules should judge; N: a seeded sample of N).
    generation_samples: int | None = Field(default=None, ge=0)
    max_new_tokens: int = Field(default=48, ge=1)

    @field_validator("tasks")
    @classmethod
    def _some_tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"eval.tasks must list at least one task, without duplicates; got {list(v)}")
        return v


class GateConfig(_Strict):
    """Promotion rules: an adapter is registered only if every enabled rule passes (bounds, not point estimates)."""

    # The held-out loss improvement (base - adapter) must have its lower confidence bound above this.
    min_task_improvement: float = 0.0
    # Accuracy may drop at most this many points (0-100 scale) at the interval's pessimistic bound.
    max_accuracy_drop_points: float = Field(default=2.0, ge=0)
    # Perplexity may rise at most this share (0.05 = 5%) at the interval's pessimistic bound.
    max_perplexity_increase: float = Field(default=0.05, ge=0)
    # The adapter's held-out loss must be below the current `champion` alias's (when one exists).
    beat_champion: bool = True
    # Task quality of greedy generations on the held-out rows must not drop significantly vs the base: rule
    # task_quality_rouge_l fails when the whole adapter - base ROUGE-L interval lies below -max_rouge_l_drop;
    # task_quality_exact_match fails when McNemar's exact test is significant (p < 1 - eval.confidence) with the
    # adapter worse. Needs generations (eval.generation_samples not 0).
    task_quality: bool = True
    # ROUGE-L F1 (0-1 scale) drop tolerated even when significant; 0: any significant drop fails.
    max_rouge_l_drop: float = Field(default=0.0, ge=0, le=1)
    # Optional LLM-as-judge rule (pipeline/evaluate/llm_judge.py), off when empty: this model, served at
    # LLM_JUDGE_URL (any OpenAI-compatible endpoint; key in LLM_JUDGE_API_KEY), compares the base's and the
    # adapter's answers pairwise; rule llm_judge_preference fails when the adapter's preference (mean score -
    # 0.5) interval lies wholly below -max_judge_preference_drop, or when the judge gives no verdict.
    llm_judge_model: str = ""
    max_judge_preference_drop: float = Field(default=0.0, ge=0, le=0.5)
    # Registered model name in the MLflow registry.
    registered_model: str = "lora-adapter"
    # True: a passing adapter gets the `champion` alias straight away; False: `candidate`.
    auto_promote: bool = False
    # Before registering, load the adapter through the serving loader of this engine and answer a canary
    # prompt (pipeline/serve/canary.py); "vllm" also refuses DoRA adapters; "off" skips the check.
    serving_check: Literal["torch", "vllm", "off"] = "torch"


Policy = Literal["error", "quarantine", "warn"]

# What each validation rule does when it fails (rule names as in schemas/ and pipeline/validate/dataset_checks.py):
# error stops the flow before training, quarantine drops the rows (kept with reasons), warn only reports.
DEFAULT_POLICIES: dict[str, Policy] = {
    "not_empty": "quarantine",
    "no_surrounding_whitespace": "quarantine",
    "no_doubled_whitespace": "quarantine",
    "balanced_markup": "quarantine",
    "known_markup_tags": "warn",
    "no_template_placeholder": "quarantine",
    "no_control_characters": "quarantine",
    "no_mojibake": "quarantine",
    "response_not_echo": "quarantine",
    "within_max_length": "quarantine",
    "response_min_tokens": "quarantine",
    "category_in_project_choices": "quarantine",
    "script_matches_language": "warn",
    "min_dataset_size": "error",
    "category_max_share": "error",
    "category_min_rows": "error",
    "no_duplicate_prompts": "quarantine",
    "no_near_duplicate_prompts": "warn",
    "no_train_eval_leakage": "error",
    "drift_category_shares": "warn",
    "drift_length": "warn",
    "drift_vocabulary": "warn",
    "min_category_agreement": "warn",
}


class ValidationConfig(_Strict):
    """Row and dataset checks: thresholds and what each failing check does (see DEFAULT_POLICIES)."""

    # Overrides of DEFAULT_POLICIES by rule name, e.g. {no_near_duplicate_prompts: quarantine}.
    policies: dict[str, Policy] = Field(default_factory=dict)
    # Responses with fewer tokens than this (base-model tokens, EOS included) teach nothing.
    min_response_tokens: int = Field(default=1, ge=0)
    # Markup tags a response may use; any other <tag> is reported by known_markup_tags.
    allowed_tags: tuple[str, ...] = ()
    # Declared script of prompts and responses (latin, cyrillic, greek, arabic, hebrew, han,
    # devanagari); None skips script_matches_language.
    script: str | None = None
    min_script_share: float = Field(default=0.8, gt=0, le=1)
    min_rows: int = Field(default=50, ge=0)
    max_category_share: float = Field(default=0.6, gt=0, le=1)
    min_rows_per_category: int = Field(default=5, ge=0)
    # Word 3-shingle Jaccard (MinHash estimate) at or above which two prompts are near-duplicates.
    near_duplicate_threshold: float = Field(default=0.85, gt=0, le=1)
    # Drift against the previous snapshot: total variation distance of category shares,
    # Kolmogorov-Smirnov statistic of response lengths, share of words never seen before.
    max_category_drift: float = Field(default=0.15, gt=0, le=1)
    max_length_drift: float = Field(default=0.25, gt=0, le=1)
    max_new_vocabulary: float = Field(default=0.3, gt=0, le=1)
    # Inter-annotator agreement, for projects with overlap (pipeline/validate/agreement/): Krippendorff's alpha
    # on the category below this fails min_category_agreement (not applicable without a task that has two or
    # more category labels); a task is a disagreement when its categories differ or its annotators' responses
    # have a mean pairwise ROUGE-L F1 below agreement_response_threshold; intervals from this many resamples.
    min_category_agreement: float = Field(default=0.6, ge=-1, le=1)
    agreement_response_threshold: float = Field(default=0.5, ge=0, le=1)
    agreement_bootstrap: int = Field(default=1000, ge=0)

    @field_validator("policies")
    @classmethod
    def _known_rules(cls, v: dict[str, Policy]) -> dict[str, Policy]:
        unknown = sorted(set(v) - set(DEFAULT_POLICIES))
        if unknown:
            raise ValueError(f"validation.policies names unknown checks {unknown}; known: {sorted(DEFAULT_POLICIES)}")
        return v

    @field_validator("script")
    @classmethod
    def _known_script(cls, v: str | None) -> str | None:
        known = ("latin", "cyrillic", "greek", "arabic", "hebrew", "han", "devanagari")
        if v is not None and v not in known:
            raise ValueError(f"validation.script={v!r} is not supported; use one of {list(known)} or null")
        return v

    def policy(self, rule: str) -> Policy:
        """What a failing rule does: the configured override, else the default."""
        return self.policies.get(rule, DEFAULT_POLICIES.get(rule, "quarantine"))


class MlflowConfig(_Strict):
    experiment: str = "lora-pipeline"
    # How long the end of training waits for an unreachable MLflow to take the buffered step metrics before
    # the run fails with a one-line message (the adapter stays on disk; a rerun resumes).
    outage_patience_s: float = Field(default=300.0, ge=0)
    # MLflow's system metrics (CPU, memory, disk, network, GPU) sampled every N seconds into the train run's
    # `system/` section while it trains and evaluates (None: off).
    system_metrics_interval_s: float | None = Field(default=10.0, gt=0)


class OrchestrationConfig(_Strict):
    """When the ingest flow starts training and how the train flow protects its work (flows/)."""

    # Train only once at least this many accepted rows were added, changed or removed since the dataset
    # of the last finished training run for the same base model and config (1: any change).
    min_changed_rows: int = Field(default=1, ge=1)
    # The train flow checkpoints every N optimizer steps when train.checkpoint_every_steps is null, so a
    # rerun after a crash resumes instead of restarting.
    checkpoint_every_steps: int = Field(default=50, ge=1)


class PipelineConfig(_Strict):
    """Everything one pipeline run needs, apart from endpoints and secrets (see `Settings`)."""

    # A Hugging Face model id or a local directory; always loaded through `from_pretrained`.
    base_model: str = DEFAULT_BASE_MODEL
    model: ModelConfig = ModelConfig()
    labelstudio: LabelStudioConfig = LabelStudioConfig()
    data: DataConfig = DataConfig()
    lora: LoraConfig = LoraConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    gate: GateConfig = GateConfig()
    mlflow: MlflowConfig = MlflowConfig()
    validation: ValidationConfig = ValidationConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

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

    def training_fingerprint(self) -> str:
        """A hash of what decides the trained adapter: everything but transport settings (how the pull talks to
        Label Studio), orchestration, checkpoint cadence, loading permissions and the base model's name (its own fingerprint, from
        its weights or hub revision, stands for it). Change detection and the train flow's work key use it."""
        data = self.model_dump(mode="json")
        data.pop("base_model")
        data.pop("model")  # how files may be loaded, not what is trained
        data.pop("orchestration")
        data["mlflow"].pop("outage_patience_s")
        ls = data.pop("labelstudio")
        data["labelstudio"] = {k: ls[k] for k in ("project_title", "project_id", "categories", "annotation_rule")}
        for key in ("checkpoint_every_steps", "keep_checkpoints"):
            data["train"].pop(key)
        blob = json.dumps(data, sort_keys=True).encode()
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
        data = _paths_from(loaded, p.resolve().parent)
    data.update({k: v for k, v in overrides.items() if v is not None})
    return PipelineConfig.model_validate(data)


# Config fields naming a local file or directory: a relative path in a config file means relative to that file,
# so a config and the data it names move together and work from any working directory.
_PATH_FIELDS = (("eval", "general_suite"), ("train", "replay", "source"))


def _paths_from(data: dict[str, Any], root: Path) -> dict[str, Any]:
    for keys in _PATH_FIELDS:
        parent: Any = data
        for key in keys[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        value = parent.get(keys[-1]) if isinstance(parent, dict) else None
        if isinstance(value, str) and value.strip() and not value.startswith("base:") and not Path(value).is_absolute():
            parent[keys[-1]] = str(root / value)
    return data


# Where a deployed flow (or a CLI command run on a worker) finds its config and base model when not told.
CONFIG_ENV = "LORA_PIPELINE_CONFIG"
BASE_MODEL_ENV = "LORA_PIPELINE_BASE_MODEL"


def resolve_config(config_path: str | None, base_model: str | None = None) -> PipelineConfig:
    """Config file: the argument, else `$LORA_PIPELINE_CONFIG`, else the built-in defaults; base model: the
    argument, else `$LORA_PIPELINE_BASE_MODEL`, else the config's."""
    path = config_path or os.environ.get(CONFIG_ENV) or None
    return load_config(path, base_model=base_model or os.environ.get(BASE_MODEL_ENV) or None)


class Settings(BaseSettings):
    """Endpoints and secrets, read from the environment (or a `.env` file); never logged."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    label_studio_url: str = Field(default="http://127.0.0.1:8080", validation_alias="LABEL_STUDIO_URL")
    label_studio_api_key: SecretStr | None = Field(default=None, validation_alias="LABEL_STUDIO_API_KEY")
    mlflow_tracking_uri: str = Field(default="sqlite:///mlflow.db", validation_alias="MLFLOW_TRACKING_URI")
    # The optional LLM judge (gate.llm_judge_model): an OpenAI-compatible base URL (…/v1) and its key.
    llm_judge_url: str | None = Field(default=None, validation_alias="LLM_JUDGE_URL")
    llm_judge_api_key: SecretStr | None = Field(default=None, validation_alias="LLM_JUDGE_API_KEY")

    @field_validator("label_studio_url")
    @classmethod
    def _no_credentials_in_ls_url(cls, v: str) -> str:
        """Label Studio authenticates by token (LABEL_STUDIO_API_KEY); `user:password@` in its URL would only be
        written into snapshots, errors and logs, so it is dropped here, before anything can store it."""
        clean, user, password = strip_userinfo(v)
        if user is not None or password is not None:
            warnings.warn(
                f"LABEL_STUDIO_URL carries credentials; they are ignored (Label Studio takes LABEL_STUDIO_API_KEY) "
                f"and the URL is used as {clean}",
                stacklevel=2,
            )
        return clean

    @field_validator("mlflow_tracking_uri")
    @classmethod
    def _mlflow_credentials_out_of_the_uri(cls, v: str) -> str:
        """`http(s)://user:password@host` becomes MLflow's own basic-auth variables (MLFLOW_TRACKING_USERNAME /
        _PASSWORD) and a URI without them, in this process's environment too, so MLflow, Prefect and our logs
        only ever see the clean URI. Other stores' URIs (a database URL) keep their credentials; every place
        that prints one redacts it (pipeline/redact.py)."""
        if not v.startswith(("http://", "https://")):
            return v
        clean, user, password = strip_userinfo(v)
        if user is None and password is None:
            return v
        if user:
            os.environ["MLFLOW_TRACKING_USERNAME"] = unquote(user)
        if password:
            os.environ["MLFLOW_TRACKING_PASSWORD"] = unquote(password)
        if os.environ.get("MLFLOW_TRACKING_URI") == v:
            os.environ["MLFLOW_TRACKING_URI"] = clean
        return clean

    def require_label_studio_key(self) -> str:
        """The Label Studio API key, or a one-line error saying how to provide it."""
        if self.label_studio_api_key is None or not self.label_studio_api_key.get_secret_value():
            raise ValueError(
                "LABEL_STUDIO_API_KEY is not set; copy the access token from Label Studio's "
                "Account & Settings page into that environment variable"
            )
        return self.label_studio_api_key.get_secret_value()
