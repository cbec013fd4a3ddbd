"""Tests for the typed run config (`PipelineConfig`), its YAML mirror and the environment `Settings`."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import (
    TARGET_PRESETS,
    LabelStudioConfig,
    LoraConfig,
    PipelineConfig,
    Settings,
    TrainConfig,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_YAML = REPO_ROOT / "configs" / "default.yaml"


def test_defaults_construct() -> None:
    """Every knob has a default; the default base model is a hub id a user can download (tests and the demo
    name their offline tiny model instead)."""
    cfg = PipelineConfig()
    assert cfg.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert cfg.lora.r == 8
    assert cfg.lora.alpha == 16.0
    assert cfg.lora.target_modules == "qv"
    assert cfg.labelstudio.categories == ("schedules", "tickets", "lost_property", "accessibility")
    assert cfg.train.device == "auto"
    assert cfg.data.eval_fraction == 0.1


def test_default_yaml_mirrors_the_defaults() -> None:
    """configs/default.yaml is the checked-in mirror of PipelineConfig(): loading it gives the defaults."""
    assert load_config(DEFAULT_YAML) == PipelineConfig()


def test_load_config_none_gives_defaults_and_applies_overrides() -> None:
    """No path means defaults; top-level overrides replace values and None overrides are ignored."""
    assert load_config() == PipelineConfig()
    cfg = load_config(DEFAULT_YAML, base_model="some/other-model", eval=None)
    assert cfg.base_model == "some/other-model"
    assert cfg.eval == PipelineConfig().eval


def test_demo_yaml_loads() -> None:
    """The packaged demo config is valid and differs from the defaults where its header says."""
    cfg = load_config(Path(str(files("pipeline.demo") / "demo.yaml")))
    assert cfg.lora.target_modules == "all-linear" and cfg.lora.r == 64
    assert cfg.train.learning_rate == pytest.approx(2e-3) != PipelineConfig().train.learning_rate
    assert cfg.train.epochs == 14 != PipelineConfig().train.epochs
    assert cfg.train.replay.ratio == 0.75 != PipelineConfig().train.replay.ratio
    assert cfg.train.replay.weight == pytest.approx(1.333) != PipelineConfig().train.replay.weight
    assert cfg.train.replay.loss == "kl" != PipelineConfig().train.replay.loss
    # The demo's held-out suite, named relative to demo.yaml: found from any working directory.
    assert Path(str(cfg.eval.general_suite)) == Path(str(files("pipeline.demo") / "general_suite"))
    assert (Path(str(cfg.eval.general_suite)) / "multiple_choice.jsonl").is_file()
    assert cfg.gate.auto_promote and cfg.eval.batch_size == 64
    assert cfg.base_model == PipelineConfig().base_model


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    """An empty YAML file (safe_load -> None) means 'all defaults', not an error."""
    p = tmp_path / "empty.yaml"
    p.write_text("")
    assert load_config(p) == PipelineConfig()


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("bogus_knob: 1\n", "bogus_knob"),
        ("lora:\n  rank: 4\n", "rank"),
        ("train:\n  lr: 0.1\n", "lr"),
    ],
)
def test_unknown_key_is_rejected_by_name(tmp_path: Path, yaml_text: str, key: str) -> None:
    """A typo in YAML fails at load time with a ValidationError that names the key."""
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml_text)
    with pytest.raises(ValidationError) as exc:
        load_config(p)
    assert key in str(exc.value)
    assert "Extra inputs are not permitted" in str(exc.value)


def test_unknown_nested_key_names_its_section() -> None:
    """The error location of a nested typo is dotted with its section, e.g. `lora.rank`."""
    with pytest.raises(ValidationError) as exc:
        PipelineConfig.model_validate({"lora": {"rank": 4}})
    assert "lora.rank" in str(exc.value)


def test_bad_target_modules_preset_names_the_knob() -> None:
    """An unknown preset string raises naming `lora.target_modules` and the valid presets."""
    with pytest.raises(ValidationError) as exc:
        PipelineConfig.model_validate({"lora": {"target_modules": "qkv"}})
    msg = str(exc.value)
    assert "lora.target_modules" in msg
    assert "'qkv'" in msg
    for preset in TARGET_PRESETS:
        assert preset in msg


def test_empty_target_modules_list_raises() -> None:
    """An explicit empty list of modules would train nothing: it raises naming the knob."""
    with pytest.raises(ValidationError, match=r"lora\.target_modules is an empty list"):
        LoraConfig(target_modules=())
    with pytest.raises(ValidationError, match=r"lora\.target_modules is an empty list"):
        PipelineConfig.model_validate({"lora": {"target_modules": []}})


def test_duplicate_categories_raise() -> None:
    """Category names must be unique; the message lists them."""
    with pytest.raises(ValidationError, match=r"labelstudio\.categories has duplicates"):
        LabelStudioConfig(categories=("tickets", "schedules", "tickets"))


def test_empty_categories_raise() -> None:
    """A project with no category cannot be labeled; an empty list raises naming the knob."""
    with pytest.raises(ValidationError, match=r"labelstudio\.categories must list at least one category"):
        LabelStudioConfig(categories=())


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"lora": {"r": 0}}, "lora.r"),
        ({"data": {"eval_fraction": 1.0}}, "data.eval_fraction"),
        ({"train": {"device": "tpu"}}, "train.device"),
        ({"labelstudio": {"project_id": 0}}, "labelstudio.project_id"),
    ],
)
def test_out_of_range_values_name_the_field(raw: dict[str, object], field: str) -> None:
    """Bounds and Literal option sets fail at construction naming the dotted field."""
    with pytest.raises(ValidationError) as exc:
        PipelineConfig.model_validate(raw)
    assert field in str(exc.value)


def test_config_is_frozen() -> None:
    """A run's config cannot be mutated after construction (its fingerprint stays true)."""
    cfg = PipelineConfig()
    with pytest.raises(ValidationError):
        cfg.lora.r = 64  # type: ignore[misc]


@pytest.mark.parametrize(
    ("target_modules", "expected"),
    [
        ("qv", ["q_proj", "v_proj"]),
        ("all-linear", "all-linear"),
        (["q_proj", "k_proj", "o_proj"], ["q_proj", "k_proj", "o_proj"]),
    ],
)
def test_peft_target_modules(target_modules: str | list[str], expected: list[str] | str) -> None:
    """Presets expand to what PEFT takes; an explicit list passes through as a list."""
    lora = LoraConfig.model_validate({"target_modules": target_modules})
    got = lora.peft_target_modules()
    assert got == expected
    assert type(got) is type(expected)


def test_to_flat_dict_has_dotted_keys() -> None:
    """Nested sections flatten to dotted keys with JSON-friendly values, for MLflow params."""
    flat = PipelineConfig().to_flat_dict()
    assert flat["lora.r"] == 8
    assert flat["lora.alpha"] == 16.0
    assert flat["lora.target_modules"] == "qv"
    assert flat["train.learning_rate"] == pytest.approx(2e-4)
    assert flat["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert flat["labelstudio.categories"] == ["schedules", "tickets", "lost_property", "accessibility"]
    assert flat["train.max_steps"] is None
    assert not any(isinstance(v, dict) for v in flat.values())
    assert "lora" not in flat


def test_fingerprint_is_stable_and_tracks_knobs() -> None:
    """Equal configs fingerprint equally (12 hex chars); changing any knob changes the fingerprint."""
    a = PipelineConfig().fingerprint()
    assert a == PipelineConfig().fingerprint()
    assert a == load_config(DEFAULT_YAML).fingerprint()
    assert len(a) == 12
    int(a, 16)
    assert PipelineConfig(lora=LoraConfig(r=16)).fingerprint() != a
    assert PipelineConfig(train=TrainConfig(seed=1)).fingerprint() != a
    assert PipelineConfig(base_model="other").fingerprint() != a


def test_load_config_missing_file(tmp_path: Path) -> None:
    """A config path that does not exist raises FileNotFoundError naming it."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match=r"nope\.yaml"):
        load_config(missing)


def test_relative_paths_in_a_config_file_are_relative_to_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """eval.general_suite and train.replay.source written relative in a file resolve against the file's folder,
    whatever the working directory; absolute paths and base:FILE stay as written."""
    conf = tmp_path / "conf"
    conf.mkdir()
    p = conf / "run.yaml"
    p.write_text("eval:\n  general_suite: suite\ntrain:\n  replay:\n    source: ../texts/general.jsonl\n")
    monkeypatch.chdir(REPO_ROOT)
    c = load_config(p)
    assert c.eval.general_suite == str(conf / "suite")
    assert Path(c.train.replay.source).resolve() == tmp_path / "texts" / "general.jsonl"
    p.write_text(f"eval:\n  general_suite: {tmp_path / 'abs'}\ntrain:\n  replay:\n    source: base:corpus.jsonl\n")
    c = load_config(p)
    assert (c.eval.general_suite, c.train.replay.source) == (str(tmp_path / "abs"), "base:corpus.jsonl")


def test_load_config_rejects_non_mapping(tmp_path: Path) -> None:
    """A YAML whose top level is a list raises ValueError saying a mapping is needed."""
    p = tmp_path / "list.yaml"
    p.write_text("- lora\n- train\n")
    with pytest.raises(ValueError, match="mapping") as exc:
        load_config(p)
    assert not isinstance(exc.value, ValidationError)
    assert "list" in str(exc.value)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No endpoint variables set and a working directory without a `.env` file."""
    for name in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_settings_read_from_environment(clean_env: pytest.MonkeyPatch) -> None:
    """Endpoints and the API key come from LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY and MLFLOW_TRACKING_URI."""
    clean_env.setenv("LABEL_STUDIO_URL", "http://ls.example:9090")
    clean_env.setenv("LABEL_STUDIO_API_KEY", "s3cr3t-token-0123456789")
    clean_env.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    s = Settings()
    assert s.label_studio_url == "http://ls.example:9090"
    assert s.mlflow_tracking_uri == "http://mlflow.example:5000"
    assert s.require_label_studio_key() == "s3cr3t-token-0123456789"


def test_settings_defaults_without_environment(clean_env: pytest.MonkeyPatch) -> None:
    """Without variables the local defaults apply and no key is set."""
    s = Settings()
    assert s.label_studio_url == "http://127.0.0.1:8080"
    assert s.mlflow_tracking_uri == "sqlite:///mlflow.db"
    assert s.label_studio_api_key is None


def test_settings_read_dotenv_in_working_directory(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A `.env` file in the working directory is read too (the reason the other tests chdir away)."""
    (tmp_path / ".env").write_text("LABEL_STUDIO_URL=http://from-dotenv:1234\n")
    assert Settings().label_studio_url == "http://from-dotenv:1234"


def test_settings_never_show_the_key(clean_env: pytest.MonkeyPatch) -> None:
    """The API key is a secret: repr, str and JSON dumps of the settings do not contain it."""
    key = "s3cr3t-token-0123456789"
    clean_env.setenv("LABEL_STUDIO_API_KEY", key)
    s = Settings()
    assert key not in repr(s)
    assert key not in str(s)
    assert key not in s.model_dump_json()
    assert s.require_label_studio_key() == key


@pytest.mark.parametrize("value", [None, ""])
def test_require_label_studio_key_when_unset(clean_env: pytest.MonkeyPatch, value: str | None) -> None:
    """A missing or empty key raises ValueError naming LABEL_STUDIO_API_KEY."""
    if value is not None:
        clean_env.setenv("LABEL_STUDIO_API_KEY", value)
    with pytest.raises(ValueError, match="LABEL_STUDIO_API_KEY"):
        Settings().require_label_studio_key()
