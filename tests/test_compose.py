"""The user stack in docker-compose.yml: its structure, and docker/check-env.sh run for real under `sh`."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
CHECK_ENV = REPO / "docker" / "check-env.sh"

BIND = "${BIND_ADDRESS:-127.0.0.1}:"
WORK_DIR = "/var/lib/lora-pipeline"
WORKERS = ("worker-cpu", "worker-gpu")
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "LABEL_STUDIO_PASSWORD",
    "LABEL_STUDIO_USER_TOKEN",
    "LORA_PIPELINE_WEBHOOK_SECRET",
)
SECRET_WORDS = ("PASSWORD", "TOKEN", "SECRET", "API_KEY")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a .env file (comments and blank lines skipped, no quoting in ours)."""
    pairs = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def good_env() -> dict[str, str]:
    return {
        "POSTGRES_USER": "lora",
        "POSTGRES_PASSWORD": secrets.token_hex(16),
        "LABEL_STUDIO_USERNAME": "admin@example.com",
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
        "LABEL_STUDIO_USER_TOKEN": secrets.token_hex(20),
        "LORA_PIPELINE_WEBHOOK_SECRET": secrets.token_hex(32),
    }


def run_check_env(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """docker/check-env.sh under the system's POSIX sh, with only `env` (plus PATH) in its environment."""
    return subprocess.run(
        ["sh", str(CHECK_ENV)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


# --- ${...} expressions in the compose file -------------------------------------------------


def interpolations(text: str) -> list[str]:
    """Bodies of the top-level `${...}` expressions in `text` (nested braces kept), skipping `$$` escapes."""
    found, i = [], 0
    while i < len(text):
        if text.startswith("$$", i):
            i += 2
        elif text.startswith("${", i):
            depth, j = 1, i + 2
            while depth:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                j += 1
            found.append(text[i + 2 : j - 1])
            i = j
        else:
            i += 1
    return found


def split_expression(body: str) -> tuple[str, str | None, str]:
    """`NAME:-default` -> (NAME, ':-', 'default'); `NAME` -> (NAME, None, '')."""
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])(.*))?", body, flags=re.DOTALL)
    assert match, f"not a compose interpolation: ${{{body}}}"
    return match.group(1), match.group(2), match.group(3) or ""


def all_strings(node: Any) -> list[str]:
    """Every string (keys and values) in a parsed YAML tree."""
    if isinstance(node, dict):
        return [s for key, value in node.items() for s in all_strings(key) + all_strings(value)]
    if isinstance(node, list):
        return [s for item in node for s in all_strings(item)]
    return [node] if isinstance(node, str) else []


def all_expressions(compose: dict[str, Any]) -> list[str]:
    """Every `${...}` body in the file, nested ones included (a default can itself be an expression)."""
    pending = [body for s in all_strings(compose) for body in interpolations(s)]
    seen = []
    while pending:
        body = pending.pop()
        seen.append(body)
        pending.extend(interpolations(split_expression(body)[2]))
    return seen


def is_secret(name: str) -> bool:
    return any(word in name for word in SECRET_WORDS)


def test_interpolation_parser_handles_nesting_and_escapes() -> None:
    text = "a ${A:-${B:?set B}} $${NOT_ME} ${C}"
    assert interpolations(text) == ["A:-${B:?set B}", "C"]
    assert split_expression("A:-${B:?set B}") == ("A", ":-", "${B:?set B}")


# --- structure ---------------------------------------------------------------------------------


def test_expected_services(services: dict[str, dict[str, Any]]) -> None:
    expected = {"env-check", "postgres", "labelstudio", "mlflow", "prefect-server", "webhooks", *WORKERS}
    assert expected <= set(services), f"missing services: {expected - set(services)}"


def test_only_the_gpu_services_sit_behind_a_profile(services: dict[str, dict[str, Any]]) -> None:
    assert services["worker-gpu"]["profiles"] == services["serve"]["profiles"] == ["gpu"]
    with_profiles = {name for name, svc in services.items() if svc.get("profiles")}
    assert with_profiles == {"worker-gpu", "serve"}, "every other service must start with a plain `docker compose up`"


def test_serve_follows_the_registry_on_one_gpu(services: dict[str, dict[str, Any]]) -> None:
    serve = services["serve"]
    assert serve["command"][:2] == ["lora-pipeline", "serve"] and "--device" in serve["command"]
    assert serve["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert serve["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    (device,) = serve["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and len(device["device_ids"]) == 1


def test_gpu_worker_reserves_exactly_one_nvidia_gpu_and_runs_one_flow_at_a_time(
    services: dict[str, dict[str, Any]],
) -> None:
    gpu = services["worker-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1
    (device,) = devices
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    # Compose rejects count together with device_ids; either one must pin a single GPU.
    assert ("count" in device) != ("device_ids" in device)
    if "count" in device:
        assert device["count"] == 1
    else:
        assert len(device["device_ids"]) == 1
    assert gpu.get("environment", {}).get("NVIDIA_VISIBLE_DEVICES") is None, "it would override the reservation"

    command = gpu["command"]
    assert command[:2] == ["lora-pipeline", "worker"]  # Prefect's process worker with a warm process
    assert command[command.index("--pool") + 1] == "gpu"
    assert command[command.index("--limit") + 1] == "1"
    assert gpu["image"] == "lora-pipeline:gpu"
    assert "/whl/cu" in gpu["build"]["args"]["TORCH_INDEX_URL"]


def test_workers_leave_pool_creation_to_deploy(services: dict[str, dict[str, Any]]) -> None:
    pools = {}
    for name in WORKERS:
        command = services[name]["command"]
        assert isinstance(command, list) and command[:2] == ["lora-pipeline", "worker"], name
        assert not any("work-pool" in part for part in command), name
        pools[name] = command[command.index("--pool") + 1]
    assert pools == {"worker-cpu": "cpu", "worker-gpu": "gpu"}


def test_workers_share_environment_and_work_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    envs = [services[name]["environment"] for name in WORKERS]
    for env in envs:
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["LABEL_STUDIO_URL"] == "http://labelstudio:8080"
        assert env["LABEL_STUDIO_API_KEY"].startswith("${LABEL_STUDIO_API_KEY:-${LABEL_STUDIO_USER_TOKEN:?")
        assert env["LORA_PIPELINE_HOME"] == "/opt/lora-pipeline"
        assert env["LORA_PIPELINE_WORK_DIR"] == WORK_DIR
        assert env["LORA_PIPELINE_BASE_MODEL"] == "${LORA_PIPELINE_BASE_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}"
    shared = ("LABEL_STUDIO_API_KEY", "LORA_PIPELINE_HOME", "LORA_PIPELINE_WORK_DIR", "LORA_PIPELINE_BASE_MODEL")
    assert {k: envs[0][k] for k in shared} == {k: envs[1][k] for k in shared}

    mounts = [{m for m in services[name]["volumes"] if m.split(":")[1] == WORK_DIR} for name in WORKERS]
    assert len(mounts[0]) == 1 and mounts[0] == mounts[1], f"both workers must mount one volume at {WORK_DIR}"
    (volume,) = (m.split(":")[0] for m in mounts[0])
    assert volume in compose["volumes"], "the work volume must be a named volume, not a per-host path"


def test_webhook_receiver_is_internal_and_label_studio_may_call_it(services: dict[str, dict[str, Any]]) -> None:
    hooks = services["webhooks"]
    assert "ports" not in hooks, "the receiver is reached inside the compose network only"
    assert hooks["command"][:2] == ["lora-pipeline", "webhook-receiver"]
    assert hooks["command"][hooks["command"].index("--port") + 1] == "8765"
    assert hooks["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert hooks["environment"]["LORA_PIPELINE_WEBHOOK_SECRET"].startswith("${LORA_PIPELINE_WEBHOOK_SECRET:?")
    assert "http://127.0.0.1:8765/health" in " ".join(hooks["healthcheck"]["test"])
    assert services["labelstudio"]["environment"]["SSRF_PROTECTION_ENABLED"] == "false"


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    one_shots = {
        dep
        for svc in services.values()
        for dep, cond in (svc.get("depends_on") or {}).items()
        if cond.get("condition") == "service_completed_successfully"
    }
    assert one_shots == {"env-check"}
    assert services["env-check"].get("restart", "no") == "no"
    missing = [name for name, svc in services.items() if name not in one_shots and "healthcheck" not in svc]
    assert not missing, f"services without a healthcheck: {missing}"


def test_everything_waits_for_env_check(services: dict[str, dict[str, Any]]) -> None:
    check = services["env-check"]
    assert check["command"] == ["sh", "/check-env.sh"]
    assert "./docker/check-env.sh:/check-env.sh:ro" in check["volumes"]
    assert set(REQUIRED_SECRETS) <= set(check["environment"])
    for name, svc in services.items():
        if name != "env-check":
            assert svc["depends_on"]["env-check"] == {"condition": "service_completed_successfully"}, name


def test_published_ports_bind_to_bind_address(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert isinstance(port, str) and port.startswith(BIND), f"{name}: {port!r} must start with {BIND!r}"


def test_no_secret_has_a_default(compose: dict[str, Any]) -> None:
    """A secret may default only to another required variable (`${A:-${B:?...}}`), never to a literal."""
    offending = []
    for body in all_expressions(compose):
        name, op, default = split_expression(body)
        if not is_secret(name) or op in (":?", "?"):
            continue
        if op is None:
            offending.append(f"${{{body}}} (no `:?`: an unset value would silently become empty)")
            continue
        inner = interpolations(default)
        required_only = len(inner) == 1 and default == f"${{{inner[0]}}}" and split_expression(inner[0])[1] == ":?"
        if not required_only:
            offending.append(f"${{{body}}}")
    assert not offending, f"secrets with a default: {offending}"


def test_env_example_covers_the_compose_variables(compose: dict[str, Any]) -> None:
    """Required variables are set in .env.example; optional ones are at least mentioned there."""
    example_text = ENV_EXAMPLE.read_text()
    example = parse_env_file(ENV_EXAMPLE)
    for body in all_expressions(compose):
        name, op, _ = split_expression(body)
        if op == ":?":
            assert example.get(name), f"{name} is required by docker-compose.yml but not set in .env.example"
        else:
            assert re.search(rf"^#?\s*{name}=", example_text, flags=re.MULTILINE), f"{name} is not in .env.example"


# --- docker/check-env.sh -----------------------------------------------------------------------


def test_check_env_refuses_the_env_example_placeholders() -> None:
    example = parse_env_file(ENV_EXAMPLE)
    result = run_check_env(example)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    for name in REQUIRED_SECRETS:
        assert "change-me" in example[name], f".env.example must keep a change-me placeholder for {name}"
        assert sum(line.startswith(f"env-check: {name} ") for line in lines) == 1, result.stderr
    assert len(lines) == len(REQUIRED_SECRETS), result.stderr


def test_check_env_accepts_good_values_and_never_prints_them() -> None:
    # Spaces, quotes and glob characters are fine outside URLs; the script must not trip on them.
    env = {**good_env(), "LABEL_STUDIO_PASSWORD": 'it\'s a "real" pass*word $HOME'}
    result = run_check_env(env)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert not any(env[name] in result.stdout for name in REQUIRED_SECRETS)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (secrets.token_hex(20)[:39], "39 chars"),
        (secrets.token_hex(21)[:41], "41 chars"),
        (secrets.token_hex(20)[:39] + "g", "not hex"),
    ],
)
def test_check_env_refuses_a_malformed_token(token: str, why: str) -> None:
    result = run_check_env({**good_env(), "LABEL_STUDIO_USER_TOKEN": token})
    assert result.returncode != 0, why
    assert result.stderr.startswith("env-check: LABEL_STUDIO_USER_TOKEN must be exactly 40 hex characters"), why
    assert token not in result.stderr + result.stdout


def test_check_env_refuses_empty_and_unset_secrets() -> None:
    env = good_env()
    env["LABEL_STUDIO_PASSWORD"] = ""
    del env["LORA_PIPELINE_WEBHOOK_SECRET"]
    result = run_check_env(env)
    assert result.returncode != 0
    assert result.stderr.splitlines() == [
        "env-check: LABEL_STUDIO_PASSWORD is empty: set it in .env",
        "env-check: LORA_PIPELINE_WEBHOOK_SECRET is empty: set it in .env",
    ]


def test_check_env_refuses_a_postgres_password_that_breaks_urls() -> None:
    result = run_check_env({**good_env(), "POSTGRES_PASSWORD": "p@ss/word"})
    assert result.returncode != 0
    assert result.stderr.startswith("env-check: POSTGRES_PASSWORD may only contain")


# --- docker compose itself, where installed --------------------------------------------------------


def docker_compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not docker_compose_available(), reason="`docker compose` (v2 plugin) is not installed")
@pytest.mark.parametrize("profile", [None, "gpu"])
def test_docker_compose_accepts_the_file(tmp_path: Path, profile: str | None) -> None:
    env_file = tmp_path / "good.env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in good_env().items()))
    args = ["docker", "compose", "-f", str(COMPOSE_FILE), "--env-file", str(env_file)]
    if profile:
        args += ["--profile", profile]
    # Only the env file may feed interpolation: a variable set in this process would override it.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LABEL_STUDIO", "LORA_", "POSTGRES"))}
    result = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stderr
