"""App recipes: validation problems by key, rendered files (parsed, not string-matched),
secrets only as ``Secret`` parts."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from pvestack._commands import MASK, Payload, Secret
from pvestack._config import load_config
from pvestack._desired import build_desired, check_apps
from pvestack._errors import ConfigError, SecretError
from pvestack._model import AppFile, AppSpec
from pvestack._verifyspec import HermesFacts, LiteLLMFacts
from pvestack.recipes import (
    HermesApp,
    LiteLLMApp,
    app_json_schema,
    load_app,
    merge_env,
    project_name,
    render_app,
)

ROOT = Path(__file__).resolve().parents[2]
KEY = Secret("litellm_key", "sk-hermes-SECRET-0123456789")
TG = Secret("telegram_token", "123456:TG-SECRET-abcdef")
MASTER = Secret("master", "sk-master-SECRET-9876543210")


def hermes_raw(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "recipe": "hermes",
        "docker": "debian",
        "image": "nousresearch/hermes-agent:v2026.7.20",
        "gateway_url": "http://10.77.0.250:4000/v1",
        "gateway_key": "litellm_key",
        "default_model": "mock-gpt",
        "memory_limit": "3g",
        "cpus": 2.0,
        "telegram": {"token": "telegram_token", "allowed_users": [1234, 5678]},
    }
    raw.update(over)
    return raw


def litellm_raw(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "recipe": "litellm",
        "image": "pvestack-lab/litellm:1.82.6",
        "master_key": "master",
        "models": [
            {"name": "mock-gpt", "model": "openai/mock-gpt", "mock_response": "it's OK"},
        ],
    }
    raw.update(over)
    return raw


def keys_of(err: ConfigError) -> list[str]:
    return [p.key for p in err.problems]


def file_of(spec: AppSpec, suffix: str) -> AppFile:
    (f,) = [f for f in spec.files if f.path.endswith(suffix)]
    return f


def text_of(f: AppFile) -> str:
    return Payload(f.content).reveal().decode()


def render_hermes(**over: Any) -> AppSpec:
    app = load_app(hermes_raw(**over), stack_name="hermes")
    return render_app(app, stack_name="hermes", secrets={"litellm_key": KEY, "telegram_token": TG})


# ---------------------------------------------------------------- load


def test_load_dispatches_by_recipe() -> None:
    assert isinstance(load_app(hermes_raw(), stack_name="h"), HermesApp)
    assert isinstance(load_app(litellm_raw(), stack_name="g"), LiteLLMApp)


def test_unknown_recipe_names_the_key() -> None:
    with pytest.raises(ConfigError) as ei:
        load_app({"recipe": "wordpress"}, stack_name="x")
    assert keys_of(ei.value) == ["recipe"]
    assert "hermes" in str(ei.value) and "litellm" in str(ei.value)


@pytest.mark.parametrize(
    ("over", "key", "words"),
    [
        ({"gateway_url": "http://gw:4000/v1/"}, "gateway_url", "trailing slash"),
        ({"gateway_url": "gw:4000"}, "gateway_url", "URL"),
        ({"docker": "snap"}, "docker", "docker-ce"),
        ({"memory_limit": "lots"}, "memory_limit", "size"),
        ({"telegram": {"allowed_users": [1]}}, "telegram.token", "required"),
        ({"colour": "blue"}, "colour", "not permitted"),
        ({"data_dir": "opt/hermes"}, "data_dir", "absolute"),
        ({"mounts": ["/opt/data"]}, "mounts", "data dir"),
        ({"key_env": "BAD-NAME"}, "key_env", "variable"),
        ({"image": "nousresearch/hermes-agent:latest"}, "image", "latest"),
        ({"image": "nousresearch/hermes-agent"}, "image", "tag"),
    ],
)
def test_hermes_problems_name_the_key(over: dict[str, Any], key: str, words: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_app(hermes_raw(**over), stack_name="hermes")
    assert key in keys_of(ei.value)
    assert words.lower() in str(ei.value).lower()


def test_latest_only_when_asked() -> None:
    app = load_app(
        hermes_raw(image="nousresearch/hermes-agent:latest", allow_latest=True), stack_name="h"
    )
    assert isinstance(app, HermesApp)


def test_missing_default_model_is_one_problem() -> None:
    raw = hermes_raw()
    del raw["default_model"]
    with pytest.raises(ConfigError) as ei:
        load_app(raw, stack_name="hermes")
    assert keys_of(ei.value) == ["default_model"]


@pytest.mark.parametrize("bad", ["1.82.7", "1.82.8"])
def test_litellm_refuses_the_malicious_releases(bad: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_app(litellm_raw(image=f"ghcr.io/berriai/litellm:main-v{bad}"), stack_name="g")
    assert keys_of(ei.value) == ["image"]
    assert "malicious" in str(ei.value)


def test_litellm_needs_a_model() -> None:
    with pytest.raises(ConfigError) as ei:
        load_app(litellm_raw(models=[]), stack_name="g")
    assert keys_of(ei.value) == ["models"]
    with pytest.raises(ConfigError) as ei:
        load_app(litellm_raw(models=[{"name": "x"}]), stack_name="g")
    assert keys_of(ei.value) == ["models[0].model"]


def test_problems_are_anchored_in_the_stack_file(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "hermes.toml").read_text()
    text = text.replace('default_model = "gpt-4o-mini"', 'default_model = "gpt-4o-mini"\nshm = 1')
    p = tmp_path / "s.toml"
    p.write_text(text)
    cfg = load_config(p, env={"PVESTACK_TOKEN_SECRET": "x"})
    with pytest.raises(ConfigError) as ei:
        check_apps(cfg)
    (prob,) = ei.value.problems
    assert prob.key == "stack[0].app.shm"
    assert prob.line is not None
    assert text.splitlines()[prob.line - 1].startswith("shm = 1")


# ---------------------------------------------------------------- hermes


def test_hermes_config_yaml_names_the_gateway_as_provider() -> None:
    spec = render_hermes()
    f = file_of(spec, "/opt/hermes/config.yaml")
    cfg = yaml.safe_load(text_of(f))
    assert cfg["model"] == {"provider": "custom:litellm", "default": "mock-gpt"}
    assert cfg["providers"]["litellm"] == {
        "api": "http://10.77.0.250:4000/v1",
        "transport": "chat_completions",
        "key_env": "LITELLM_API_KEY",
    }
    assert cfg["terminal"] == {"backend": "local", "cwd": "/opt/data/workspace"}
    assert (f.mode, f.uid, f.gid) == ("0640", 10000, 10000)
    assert f.services == ("hermes",)


def test_hermes_compose_structure() -> None:
    spec = render_hermes(mounts=None)
    compose = yaml.safe_load(text_of(file_of(spec, "/opt/hermes-stack/compose.yml")))
    svc = compose["services"]["hermes"]
    assert svc["image"] == "nousresearch/hermes-agent:v2026.7.20"
    assert svc["command"] == ["gateway", "run"]
    assert svc["shm_size"] == "1g"
    assert svc["restart"] == "unless-stopped"
    assert "user" not in svc
    assert svc["environment"] == {"HERMES_UID": "10000", "HERMES_GID": "10000"}
    assert svc["env_file"] == ["/opt/hermes-stack/hermes.env"]
    assert svc["volumes"] == ["/opt/hermes:/opt/data"]  # no stack mounts given
    assert not any(v.endswith(":ro") for v in svc["volumes"])
    assert (svc["mem_limit"], svc["cpus"]) == ("3g", 2.0)
    assert spec.services == ("hermes",)
    assert isinstance(spec.verify, HermesFacts)
    assert spec.verify.container == svc["container_name"] == "hermes"


def test_hermes_binds_the_stack_mounts_like_the_seed(tmp_path: Path) -> None:
    cfg = load_config(
        ROOT / "examples" / "hermes.toml",
        env={"PVESTACK_TOKEN_SECRET": "x", "LITELLM_API_KEY": KEY.value},
    )
    desired = build_desired(cfg, env={"PVESTACK_TOKEN_SECRET": "x", "LITELLM_API_KEY": KEY.value})
    app = desired.stacks[0].app
    assert app is not None
    svc = yaml.safe_load(text_of(file_of(app, "compose.yml")))["services"]["hermes"]
    assert svc["volumes"] == ["/opt/hermes:/opt/data", "/data:/data", "/fast:/fast"]
    # the optional Telegram token is not set: no platform, no token line
    env = text_of(file_of(app, "/.env"))
    assert env == f"LITELLM_API_KEY={KEY.value}\n"
    assert isinstance(app.verify, HermesFacts) and app.verify.platforms == ()


def test_hermes_env_holds_the_secrets_only_as_secret_parts() -> None:
    spec = render_hermes(env={"TZ": "Asia/Seoul"}, gateway_allowed_users=[42])
    f = file_of(spec, "/opt/hermes/.env")
    assert (f.mode, f.uid, f.gid, f.merge_env) == ("0600", 10000, 10000, True)
    assert [p for p in f.content if isinstance(p, Secret)] == [KEY, TG]
    lines = text_of(f).splitlines()
    assert lines == [
        f"LITELLM_API_KEY={KEY.value}",
        f"TELEGRAM_BOT_TOKEN={TG.value}",
        "TELEGRAM_ALLOWED_USERS=1234,5678",
        "GATEWAY_ALLOWED_USERS=42",
        "TZ=Asia/Seoul",
    ]
    masked = Payload(f.content).masked()
    assert KEY.value not in masked and TG.value not in masked and MASK in masked
    assert set(spec.secrets) == {KEY, TG}
    assert isinstance(spec.verify, HermesFacts) and spec.verify.platforms == ("telegram",)
    # no other file carries a secret, nor its value in text
    for other in spec.files:
        if other is f:
            continue
        assert all(isinstance(p, str) for p in other.content)
        assert KEY.value not in text_of(other) and TG.value not in text_of(other)


def test_hermes_without_the_gateway_key_is_a_secret_error() -> None:
    app = load_app(hermes_raw(), stack_name="hermes")
    with pytest.raises(SecretError, match="litellm_key"):
        render_app(app, stack_name="hermes", secrets={})


def test_hermes_uid_follows_the_data_dir_owner() -> None:
    spec = render_hermes(uid=1000, gid=1001, data_dir="/srv/hermes")
    svc = yaml.safe_load(text_of(file_of(spec, "compose.yml")))["services"]["hermes"]
    assert svc["environment"] == {"HERMES_UID": "1000", "HERMES_GID": "1001"}
    assert "/srv/hermes:/opt/data" in svc["volumes"]
    env = file_of(spec, "/srv/hermes/.env")
    assert (env.uid, env.gid) == (1000, 1001)
    assert isinstance(spec.verify, HermesFacts) and spec.verify.data_dir == "/srv/hermes"


def test_compose_config_accepts_the_files(tmp_path: Path) -> None:
    """`docker compose config` (or docker-compose v1) when a compose binary exists here."""
    argv: list[str] | None = None
    if shutil.which("docker-compose"):
        argv = ["docker-compose"]
    elif shutil.which("docker") and (
        subprocess.run(
            ["docker", "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        argv = ["docker", "compose"]
    if argv is None:
        pytest.skip("no compose binary on this machine: the structure tests above stand in")
    for spec in (
        render_hermes(),
        render_app(
            load_app(litellm_raw(), stack_name="g"), stack_name="g", secrets={"master": MASTER}
        ),
    ):
        compose = tmp_path / f"{spec.recipe}.yml"
        text = text_of(file_of(spec, "compose.yml")).replace(spec.project_dir, str(tmp_path))
        compose.write_text(text)
        (tmp_path / "hermes.env").write_text("A=1\n")
        r = subprocess.run(
            [*argv, "-f", str(compose), "config", "-q"],
            capture_output=True,
            text=True,
            env={**os.environ},
            check=False,
        )
        assert r.returncode == 0, r.stderr


# ---------------------------------------------------------------- litellm


def test_litellm_config_has_the_master_key_and_mock_model() -> None:
    app = load_app(litellm_raw(port=4100, memory_limit="1g"), stack_name="gateway")
    spec = render_app(app, stack_name="gateway", secrets={"master": MASTER})
    f = file_of(spec, "/opt/litellm-stack/config.yaml")
    assert (f.mode, f.uid, f.services) == ("0600", 0, ("litellm",))
    cfg = yaml.safe_load(text_of(f))
    assert cfg["general_settings"]["master_key"] == MASTER.value
    assert cfg["model_list"] == [
        {
            "model_name": "mock-gpt",
            "litellm_params": {"model": "openai/mock-gpt", "mock_response": "it's OK"},
        }
    ]
    assert MASTER.value not in Payload(f.content).masked()
    compose = yaml.safe_load(text_of(file_of(spec, "compose.yml")))["services"]["litellm"]
    assert compose["command"] == ["--config", "/app/config.yaml", "--port", "4100"]
    assert compose["ports"] == ["4100:4100"]
    assert "/opt/litellm-stack/config.yaml:/app/config.yaml:ro" in compose["volumes"]
    assert "environment" not in compose  # the key is not in docker inspect
    assert isinstance(spec.verify, LiteLLMFacts)
    assert spec.verify.models == ("mock-gpt",) and spec.verify.port == 4100
    assert spec.verify.project == project_name("gateway") == "gateway"


def test_litellm_upstream_keys_are_secrets_with_yaml_escaping() -> None:
    odd = Secret("up", 'k"ey\\with-quotes')
    app = load_app(
        litellm_raw(models=[{"name": "real", "model": "openai/gpt-4o", "api_key": "up"}]),
        stack_name="g",
    )
    spec = render_app(app, stack_name="g", secrets={"master": MASTER, "up": odd})
    f = file_of(spec, "config.yaml")
    cfg = yaml.safe_load(text_of(f))
    assert cfg["model_list"][0]["litellm_params"]["api_key"] == odd.value
    assert {s.name for s in spec.secrets} == {"master", "up"}
    assert odd.value not in Payload(f.content).masked()


def test_litellm_default_image_is_pinned_to_the_good_release() -> None:
    app = load_app({k: v for k, v in litellm_raw().items() if k != "image"}, stack_name="g")
    spec = render_app(app, stack_name="g", secrets={"master": MASTER})
    assert spec.images[0].ref.endswith("1.82.6")


# ---------------------------------------------------------------- .env merge rule


def test_merge_env_keeps_other_keys_and_comments() -> None:
    existing = "# mine\nAPI_SERVER_KEY=abc\nLITELLM_API_KEY=old\nLITELLM_API_KEY=dup\n"
    out = merge_env(existing, {"LITELLM_API_KEY": "new", "TZ": "UTC"})
    assert out == "# mine\nAPI_SERVER_KEY=abc\nLITELLM_API_KEY=new\nTZ=UTC\n"


def test_app_json_schema_accepts_the_examples_and_refuses_typos() -> None:
    schema = app_json_schema()
    jsonschema.validate(hermes_raw(), schema)
    jsonschema.validate(litellm_raw(), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(hermes_raw(colour="blue"), schema)


# ---------------------------------------------------------------- API server and dashboard

API = Secret("api_key", "hermes-api-SECRET-0123456789")


def render_surfaces(**over: Any) -> AppSpec:
    app = load_app(hermes_raw(**over), stack_name="hermes")
    secrets = {"litellm_key": KEY, "telegram_token": TG, "api_key": API}
    return render_app(app, stack_name="hermes", secrets=secrets)


def test_api_server_and_dashboard_are_off_by_default() -> None:
    spec = render_hermes()
    compose = yaml.safe_load(text_of(file_of(spec, "compose.yml")))
    assert list(compose["services"]) == ["hermes"] and "ports" not in compose["services"]["hermes"]
    assert "API_SERVER" not in text_of(file_of(spec, "/.env"))
    assert isinstance(spec.verify, HermesFacts)
    assert spec.verify.api_server is None and spec.verify.dashboard_port is None


def test_api_server_listens_on_the_ct_with_its_key_only_in_dotenv() -> None:
    spec = render_surfaces(api_server={"port": 8700, "key": "api_key"})
    svc = yaml.safe_load(text_of(file_of(spec, "compose.yml")))["services"]["hermes"]
    assert svc["ports"] == ["8700:8700"]
    env = file_of(spec, "/.env")
    assert API in env.content
    lines = text_of(env).splitlines()
    for want in ("API_SERVER_ENABLED=true", "API_SERVER_HOST=0.0.0.0", "API_SERVER_PORT=8700"):
        assert want in lines
    assert f"API_SERVER_KEY={API.value}" in lines
    for f in spec.files:
        if not f.path.endswith("/.env"):
            assert API.value not in text_of(f), f.path
    assert API in spec.secrets
    assert isinstance(spec.verify, HermesFacts) and spec.verify.api_server is not None
    assert (spec.verify.api_server.port, spec.verify.api_server.key) == (8700, API)


def test_api_server_key_shorter_than_hermes_accepts_is_refused() -> None:
    app = load_app(hermes_raw(api_server={"key": "api_key"}), stack_name="hermes")
    short = {"litellm_key": KEY, "telegram_token": TG, "api_key": Secret("api_key", "short")}
    with pytest.raises(SecretError, match="shorter than 16"):
        render_app(app, stack_name="hermes", secrets=short)


def test_dashboard_is_bound_to_the_ct_loopback_unless_asked() -> None:
    spec = render_surfaces(dashboard={"port": 9119})
    services = yaml.safe_load(text_of(file_of(spec, "compose.yml")))["services"]
    dash = services["dashboard"]
    assert dash["network_mode"] == "host"
    assert dash["command"] == ["dashboard", "--host", "127.0.0.1", "--port", "9119", "--no-open"]
    assert dash["image"] == services["hermes"]["image"] and "ports" not in dash
    assert spec.services == ("hermes", "dashboard")
    wide = render_surfaces(dashboard={"host": "0.0.0.0"})
    dash = yaml.safe_load(text_of(file_of(wide, "compose.yml")))["services"]["dashboard"]
    assert dash["command"][2] == "0.0.0.0"
    with pytest.raises(ConfigError):
        load_app(hermes_raw(dashboard={"host": "everywhere"}), stack_name="hermes")
