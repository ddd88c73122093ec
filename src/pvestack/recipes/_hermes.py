"""The ``hermes`` recipe: Hermes Agent's messaging gateway (image ``nousresearch/hermes-agent``).

``config.yaml`` names the gateway as a provider (``custom:<provider>``, key from
``key_env``) and the default model. pvestack owns only the keys it renders there (see
``_yamlkeys``): Hermes's boot migration and its own additions are kept, and a new file
carries the pinned image's ``_config_version`` when it is known, so the image has
nothing to migrate. ``<data_dir>/.env`` (mode 600) carries the gateway key, the
platform tokens and the API server's key; Hermes reads it from HERMES_HOME, so no
secret is in the container's environment (``docker inspect``). Other ``.env`` keys
(e.g. the ``API_SERVER_KEY`` the official image generates) are kept.

Optional surfaces, off by default: ``api_server = { port, key }`` (Hermes's
OpenAI-compatible API server, published on the container's address, the key from
``[secrets]`` into ``.env``) and ``dashboard = { port, host }`` (``hermes dashboard``,
bound to the container's loopback unless ``host`` says otherwise, as upstream advises:
it stores API keys).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Literal

from pydantic import Field, field_validator

from pvestack._commands import Secret
from pvestack._config import check_path
from pvestack._errors import SecretError
from pvestack._model import AppFile, AppSpec, ImageSource
from pvestack._verifyspec import ApiServerFacts, HermesFacts
from pvestack.recipes._base import (
    ENV_NAME,
    SIZE,
    AppBase,
    Strict,
    env_lines,
    ids,
    project_name,
    render,
    secret,
)

HERMES_DEFAULT_IMAGE = "nousresearch/hermes-agent:v2026.7.20"  # hermes-agent 0.19.0 (2026.7.20)
# The config.yaml schema version (hermes_cli.config.DEFAULT_CONFIG["_config_version"])
# of the images pvestack knows, read from hermes-agent's own source (0.18.2 and 0.19.0:
# 33). Other images: set ``config_version`` in the stack file, or leave it to the
# image's boot migration.
CONFIG_VERSIONS: Mapping[str, int] = {
    "nousresearch/hermes-agent:v2026.7.20": 33,  # hermes-agent 0.19.0
}
API_SERVER_MIN_KEY = 16  # gateway/platforms/api_server.py refuses shorter keys


class TelegramApp(Strict):
    token: str = Field(description="secret name of TELEGRAM_BOT_TOKEN")
    allowed_users: list[int | str] = Field(default_factory=list)


class DiscordApp(Strict):
    token: str = Field(description="secret name of DISCORD_BOT_TOKEN")
    allowed_users: list[int | str] = Field(default_factory=list)
    allowed_roles: list[int | str] = Field(default_factory=list)


class SlackApp(Strict):
    bot_token: str = Field(description="secret name of SLACK_BOT_TOKEN (xoxb-)")
    app_token: str = Field(description="secret name of SLACK_APP_TOKEN (xapp-)")
    allowed_users: list[str] = Field(default_factory=list)


class ApiServerApp(Strict):
    port: int = Field(default=8642, ge=1, le=65535)
    key: str = Field(description="secret name of API_SERVER_KEY (at least 16 characters)")


class DashboardApp(Strict):
    port: int = Field(default=9119, ge=1, le=65535)
    host: str = Field(
        default="127.0.0.1",
        description="the CT address it binds (default loopback: the dashboard stores keys)",
    )

    @field_validator("host")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class HermesApp(AppBase):
    recipe: Literal["hermes"]
    gateway_url: str = Field(description="the gateway's OpenAI base URL, e.g. http://gw:4000/v1")
    gateway_key: str = Field(description="name of the [secrets] entry holding the gateway key")
    key_env: str = "LITELLM_API_KEY"
    provider: str = "litellm"
    default_model: str
    data_dir: str = "/opt/hermes"
    uid: int = Field(default=10000, ge=1, le=65535, description="data dir owner in the CT")
    gid: int | None = Field(default=None, ge=1, le=65535)
    workspace: str = "/opt/data/workspace"
    mounts: list[str] | None = Field(
        default=None,
        description="container paths bound into the Hermes container at the same path "
        "(default: every [[stack.mount]] path)",
    )
    shm_size: str = "1g"
    pids_limit: int | None = Field(default=None, ge=16)
    container: str = "hermes"
    env: dict[str, str] = Field(
        default_factory=dict, description="extra non-secret variables for .env"
    )
    telegram: TelegramApp | None = None
    discord: DiscordApp | None = None
    slack: SlackApp | None = None
    gateway_allowed_users: list[int | str] = Field(default_factory=list)
    api_server: ApiServerApp | None = Field(
        default=None, description="Hermes's OpenAI-compatible API server (off by default)"
    )
    dashboard: DashboardApp | None = Field(default=None, description="hermes dashboard (off)")
    config_version: int | None = Field(
        default=None,
        ge=1,
        description="config.yaml's _config_version for a new file (default: known for "
        "the official images; unknown: the image's boot migration sets it)",
    )

    @field_validator("gateway_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", v):
            raise ValueError("an http(s) URL such as http://gateway:4000/v1")
        if v.endswith("/"):
            raise ValueError("no trailing slash (Hermes joins paths itself)")
        return v

    @field_validator("key_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if not ENV_NAME.fullmatch(v):
            raise ValueError("an environment variable name")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not ENV_NAME.fullmatch(k):
                raise ValueError(f"{k!r} is not an environment variable name")
            if not val.isprintable():
                raise ValueError(f"{k}: a value on one line, without control characters")
        return v

    @field_validator("provider", "container")
    @classmethod
    def _ident(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", v):
            raise ValueError("lowercase letters, digits, '.', '_' or '-'")
        return v

    @field_validator("data_dir", "workspace")
    @classmethod
    def _abs(cls, v: str) -> str:
        check_path(v, "path")
        if ":" in v:  # compose reads "HOST:CONTAINER" volume specs
            raise ValueError(f"{v!r}: an absolute path without ':'")
        return v.rstrip("/") or v

    @field_validator("mounts")
    @classmethod
    def _abs_mounts(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            check_path(p, "mount")
            if ":" in p:
                raise ValueError(f"{p!r}: an absolute container path without ':'")
            if p.rstrip("/") == "/opt/data":
                raise ValueError("/opt/data is the data dir's mount point")
        return v

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, v: str) -> str:
        if not SIZE.fullmatch(v):
            raise ValueError("a size like 1g")
        return v


def config_version(app: HermesApp, image: str) -> int | None:
    """The ``_config_version`` a new config.yaml gets (None: unknown, not written)."""
    return app.config_version if app.config_version is not None else CONFIG_VERSIONS.get(image)


def _platform_env(
    app: HermesApp, secrets: Mapping[str, Secret]
) -> tuple[dict[str, str | Secret], list[Secret], list[str]]:
    env: dict[str, str | Secret] = {}
    used: list[Secret] = []
    platforms: list[str] = []
    if app.telegram is not None:
        tok = secret(secrets, app.telegram.token, "stack.app.telegram.token", required=False)
        if tok is not None:
            env["TELEGRAM_BOT_TOKEN"] = tok
            used.append(tok)
            platforms.append("telegram")
            if app.telegram.allowed_users:
                env["TELEGRAM_ALLOWED_USERS"] = ids(app.telegram.allowed_users)
    if app.discord is not None:
        tok = secret(secrets, app.discord.token, "stack.app.discord.token", required=False)
        if tok is not None:
            env["DISCORD_BOT_TOKEN"] = tok
            used.append(tok)
            platforms.append("discord")
            if app.discord.allowed_users:
                env["DISCORD_ALLOWED_USERS"] = ids(app.discord.allowed_users)
            if app.discord.allowed_roles:
                env["DISCORD_ALLOWED_ROLES"] = ids(app.discord.allowed_roles)
    if app.slack is not None:
        bot = secret(secrets, app.slack.bot_token, "stack.app.slack.bot_token", required=False)
        tok_app = secret(secrets, app.slack.app_token, "stack.app.slack.app_token", required=False)
        if bot is not None and tok_app is not None:
            env["SLACK_BOT_TOKEN"] = bot
            env["SLACK_APP_TOKEN"] = tok_app
            used += [bot, tok_app]
            platforms.append("slack")
            if app.slack.allowed_users:
                env["SLACK_ALLOWED_USERS"] = ",".join(app.slack.allowed_users)
    return env, used, platforms


def _api_server_env(
    app: HermesApp, secrets: Mapping[str, Secret]
) -> tuple[dict[str, str | Secret], ApiServerFacts | None]:
    if app.api_server is None:
        return {}, None
    key = secret(secrets, app.api_server.key, "stack.app.api_server.key", required=True)
    assert key is not None
    if len(key.value) < API_SERVER_MIN_KEY:
        raise SecretError(
            f"stack.app.api_server.key: the secret {app.api_server.key!r} is shorter than "
            f"{API_SERVER_MIN_KEY} characters (Hermes's API server refuses it)"
        )
    env: dict[str, str | Secret] = {
        "API_SERVER_ENABLED": "true",
        "API_SERVER_HOST": "0.0.0.0",  # noqa: S104 (in its Docker container; published below)
        "API_SERVER_PORT": str(app.api_server.port),
        "API_SERVER_KEY": key,
    }
    return env, ApiServerFacts(app.api_server.port, key)


def _compose(app: HermesApp, name: str, image: str, *, env_file: str, mounts: list[str]) -> str:
    gid = app.gid if app.gid is not None else app.uid
    return render(
        "hermes-compose.yml.j2",
        stack_name=name,
        image=image,
        container=app.container,
        restart=app.restart,
        shm_size=app.shm_size,
        uid=app.uid,
        gid=gid,
        data_dir=app.data_dir,
        env_file=env_file,
        mounts=mounts,
        memory_limit=app.memory_limit,
        cpus=app.cpus,
        pids_limit=app.pids_limit,
        api_port=app.api_server.port if app.api_server is not None else None,
        dashboard=app.dashboard,
    )


def render_hermes(
    app: HermesApp, name: str, stack_mounts: list[str], secrets: Mapping[str, Secret]
) -> AppSpec:
    project = app.project_dir or "/opt/hermes-stack"
    gid = app.gid if app.gid is not None else app.uid
    image = app.image_ref(HERMES_DEFAULT_IMAGE)
    mounts = app.mounts if app.mounts is not None else stack_mounts
    mounts = [m for m in mounts if m.rstrip("/") != app.data_dir]
    compose = _compose(app, name, image, env_file=f"{project}/hermes.env", mounts=mounts)
    config = render(
        "hermes-config.yaml.j2",
        stack_name=name,
        provider=app.provider,
        default_model=app.default_model,
        gateway_url=app.gateway_url,
        key_env=app.key_env,
        workspace=app.workspace,
        config_version=config_version(app, image),
    )
    # .env: what the stack file sets (others already in the file are kept)
    key = secret(secrets, app.gateway_key, "stack.app.gateway_key", required=True)
    assert key is not None
    env: dict[str, str | Secret] = {app.key_env: key}
    platform_env, used, platforms = _platform_env(app, secrets)
    env.update(platform_env)
    api_env, api = _api_server_env(app, secrets)
    env.update(api_env)
    if app.gateway_allowed_users:
        env["GATEWAY_ALLOWED_USERS"] = ids(app.gateway_allowed_users)
    env.update(app.env)
    plain_env = (
        f"# Rendered by pvestack (recipe hermes) for stack {name}: no secrets here.\n"
        f"HERMES_HOME=/opt/data\nHERMES_UID={app.uid}\nHERMES_GID={gid}\n"
    )
    svc = ("hermes", "dashboard") if app.dashboard is not None else ("hermes",)
    files = (
        # compose.yml and the env_file: `compose up -d` recreates what they change
        AppFile(f"{project}/compose.yml", (compose,), "0644", 0, 0),
        AppFile(f"{project}/hermes.env", (plain_env,), "0644", 0, 0),
        AppFile(
            f"{app.data_dir}/config.yaml", (config,), "0640", app.uid, gid, svc, merge_yaml=True
        ),
        AppFile(f"{app.data_dir}/.env", env_lines(env), "0600", app.uid, gid, svc, merge_env=True),
    )
    facts = HermesFacts(
        project=project_name(name),
        data_dir=app.data_dir,
        container=app.container,
        gateway_url=app.gateway_url,
        default_model=app.default_model,
        key_env=app.key_env,
        uid=app.uid,
        gid=gid,
        platforms=tuple(platforms),
        api_server=api,
        dashboard_port=app.dashboard.port if app.dashboard is not None else None,
    )
    return AppSpec(
        recipe="hermes",
        project_dir=project,
        files=files,
        images=(ImageSource(image, app.image_tarball),),
        docker_source=app.docker,
        services=svc,
        secrets=(key, *used, *([api.key] if api is not None else [])),
        verify=facts,
    )
