"""App recipes: the stack file's ``[stack.app]`` section -> files and a compose project.

``load_app(raw, stack_name=...)`` validates the table with pydantic (``ConfigError``,
one ``Problem`` per bad key, the key relative to ``stack.app``: ``default_model``,
``telegram.token``...; ``_desired`` re-anchors it at ``stack[i].app.<key>`` with the
line). ``render_app(app, stack=..., secrets=...)`` renders the jinja2 templates into an
``AppSpec``: the files (secrets kept as ``Secret`` parts, never in text), the images,
the compose services, and what ``verify`` needs.

Recipes:

* ``hermes``: Hermes Agent's messaging gateway. ``config.yaml`` names the gateway as
  a provider (``custom:<provider>``, key from ``key_env``) and the default model;
  ``<data_dir>/.env`` (mode 600, owned by the data dir's owner) carries the gateway key
  and the platform tokens and is read by Hermes itself from HERMES_HOME, so no secret
  is in the container's environment (``docker inspect``). The compose ``env_file`` is a
  non-secret file in the project dir.
* ``litellm``: the LiteLLM proxy (``litellm[proxy]==1.82.6``) as a compose project, its
  master key inside ``config.yaml`` (mode 600), the model list from the stack file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pvestack._commands import Secret, comment
from pvestack._config import StackSection, check_path
from pvestack._errors import ConfigError, Problem, SecretError
from pvestack._model import AppFile, AppSpec, ImageSource, frozen_map

__all__ = [
    "AppConfig",
    "HermesApp",
    "LiteLLMApp",
    "app_json_schema",
    "env_lines",
    "load_app",
    "merge_env",
    "render_app",
]

HERMES_DEFAULT_IMAGE = "nousresearch/hermes-agent:v2026.7.20"  # hermes-agent 0.19.0 (2026.7.20)
LITELLM_VERSION = "1.82.6"
LITELLM_DEFAULT_IMAGE = f"ghcr.io/berriai/litellm:main-v{LITELLM_VERSION}"
# litellm 1.82.7 and 1.82.8 were malicious releases (credential stealers).
LITELLM_BANNED = ("1.82.7", "1.82.8")

_SIZE = re.compile(r"^\d+(\.\d+)?[bkmgBKMG]?$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECRET_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_image(ref: str) -> str:
    ref = ref.strip()
    if not ref or any(c.isspace() for c in ref):
        raise ValueError("an image reference has no spaces")
    name, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "")
    if "@" in ref:
        return ref
    if not name or "/" in tag:  # no tag at all ("repo/name" or "host:5000/name")
        raise ValueError(f"pin the image with a tag (e.g. {ref}:v1.2.3), not an implicit latest")
    return ref


class _AppBase(_Strict):
    docker: Literal["docker-ce", "debian", "preinstalled"] = Field(
        default="docker-ce",
        description="where Docker comes from: Docker's apt repository (with the compose "
        "plugin), Debian's docker.io + docker-compose, or already installed",
    )
    image: str = ""
    allow_latest: bool = Field(default=False, description="accept the image tag `latest`")
    image_tarball: str | None = Field(
        default=None,
        description="an image tarball on the operator's machine (docker save): pushed "
        "into the CT and `docker load`ed instead of pulling",
    )
    project_dir: str = ""
    restart: Literal["no", "always", "unless-stopped", "on-failure"] = "unless-stopped"
    memory_limit: str | None = Field(default=None, description="compose mem_limit, e.g. 3g")
    cpus: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @field_validator("project_dir")
    @classmethod
    def _abs_dir(cls, v: str) -> str:
        if v:
            check_path(v, "project_dir")
        return v.rstrip("/") or v

    @field_validator("memory_limit")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None and not _SIZE.fullmatch(v):
            raise ValueError("a size like 512m or 3g")
        return v

    @field_validator("image_tarball")
    @classmethod
    def _tarball(cls, v: str | None) -> str | None:
        if v is not None:
            check_path(v, "image_tarball", absolute=False, pve=False)
        return v

    def image_ref(self, default: str) -> str:
        ref = _check_image(self.image or default)
        if ref.endswith(":latest") and not self.allow_latest:
            raise ValueError("the tag `latest` is not pinned: name a release or set allow_latest")
        return ref


class TelegramApp(_Strict):
    token: str = Field(description="secret name of TELEGRAM_BOT_TOKEN")
    allowed_users: list[int | str] = Field(default_factory=list)


class DiscordApp(_Strict):
    token: str = Field(description="secret name of DISCORD_BOT_TOKEN")
    allowed_users: list[int | str] = Field(default_factory=list)
    allowed_roles: list[int | str] = Field(default_factory=list)


class SlackApp(_Strict):
    bot_token: str = Field(description="secret name of SLACK_BOT_TOKEN (xoxb-)")
    app_token: str = Field(description="secret name of SLACK_APP_TOKEN (xapp-)")
    allowed_users: list[str] = Field(default_factory=list)


class HermesApp(_AppBase):
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
        if not _ENV_NAME.fullmatch(v):
            raise ValueError("an environment variable name")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not _ENV_NAME.fullmatch(k):
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
        if not _SIZE.fullmatch(v):
            raise ValueError("a size like 1g")
        return v


class LiteLLMModel(_Strict):
    name: str = Field(description="the model_name clients ask for")
    model: str = Field(description="litellm_params.model, e.g. openai/gpt-4o-mini")
    mock_response: str | None = Field(default=None, description="answer every call (tests)")
    api_base: str | None = None
    api_key: str | None = Field(default=None, description="secret name of the upstream key")


class LiteLLMApp(_AppBase):
    recipe: Literal["litellm"]
    master_key: str = Field(description="name of the [secrets] entry holding the master key")
    port: int = Field(default=4000, ge=1, le=65535)
    models: Annotated[list[LiteLLMModel], Field(min_length=1)]
    container: str = "litellm"

    @field_validator("image")
    @classmethod
    def _not_banned(cls, v: str) -> str:
        for bad in LITELLM_BANNED:
            if bad in v:
                raise ValueError(f"litellm {bad} was a malicious release; use {LITELLM_VERSION}")
        return v


AppConfig = HermesApp | LiteLLMApp
_RECIPES: dict[str, type[HermesApp] | type[LiteLLMApp]] = {
    "hermes": HermesApp,
    "litellm": LiteLLMApp,
}


def app_json_schema() -> dict[str, Any]:
    """JSON Schema of ``[stack.app]``: one of the recipes, chosen by ``recipe``."""
    hermes = HermesApp.model_json_schema()
    litellm = LiteLLMApp.model_json_schema()
    defs: dict[str, Any] = {**hermes.pop("$defs", {}), **litellm.pop("$defs", {})}
    return {
        "title": "stack.app",
        "oneOf": [hermes, litellm],
        "discriminator": {"propertyName": "recipe"},
        "$defs": defs,
    }


# ---------------------------------------------------------------- load


def _key(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_app(raw: Mapping[str, Any], *, stack_name: str) -> AppConfig:
    """Validate ``[stack.app]``. Problems name the key relative to ``stack.app``."""
    recipe = raw.get("recipe")
    cls = _RECIPES.get(str(recipe)) if isinstance(recipe, str) else None
    if cls is None:
        known = ", ".join(sorted(_RECIPES))
        raise ConfigError(
            [
                Problem(
                    "", "recipe", f"unknown recipe {recipe!r} (stack {stack_name}); one of: {known}"
                )
            ]
        )
    try:
        app = cls.model_validate(dict(raw))
    except ValidationError as e:
        problems = [
            Problem("", _key(tuple(err["loc"])), err["msg"].removeprefix("Value error, "))
            for err in e.errors()
        ]
        raise ConfigError(problems) from None
    default = HERMES_DEFAULT_IMAGE if isinstance(app, HermesApp) else LITELLM_DEFAULT_IMAGE
    try:
        app.image_ref(default)
    except ValueError as e:
        raise ConfigError([Problem("", "image", str(e))]) from None
    return app


# ---------------------------------------------------------------- render


@cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(enabled_extensions=(), default=False),
        keep_trailing_newline=True,
    )
    # data in a template is a YAML scalar (``tojson``) or the text of a comment (``comment``:
    # no newline or control character can end the comment line); never pasted raw
    env.filters["comment"] = comment
    return env


def _render(template: str, **ctx: Any) -> str:
    return _env().get_template(template).render(**ctx)


def project_name(stack_name: str) -> str:
    """The compose project name for a stack (compose: lowercase, digits, '-', '_')."""
    name = re.sub(r"[^a-z0-9_-]", "-", stack_name.lower()).strip("-_")
    return name or "app"


def _secret(
    secrets: Mapping[str, Secret], name: str, what: str, *, required: bool
) -> Secret | None:
    s = secrets.get(name)
    if s is None or not s.value:
        if required:
            raise SecretError(
                f"{what}: the secret {name!r} has no value",
                hint=f"define {name} in [secrets] and provide its source",
            )
        return None
    if "\n" in s.value or "\r" in s.value:
        raise SecretError(f"{what}: the secret {name!r} spans several lines")
    return s


def env_lines(pairs: Mapping[str, str | Secret]) -> tuple[str | Secret, ...]:
    """``KEY=value`` lines as content parts (secrets stay ``Secret``)."""
    parts: list[str | Secret] = []
    for k, v in pairs.items():
        parts.append(f"{k}=")
        parts.append(v)
        parts.append("\n")
    # join adjacent plain strings
    out: list[str | Secret] = []
    for p in parts:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return tuple(out)


def merge_env(existing: str, wanted: Mapping[str, str]) -> str:
    """``existing`` .env text with ``wanted`` keys set; other lines and keys are kept.

    Documents the rule the guest step's merge script applies in the container.
    """
    lines = existing.splitlines()
    seen: set[str] = set()
    out: list[str] = []
    for line in lines:
        key = (
            line.split("=", 1)[0].strip()
            if "=" in line and not line.lstrip().startswith("#")
            else None
        )
        if key is not None and key in wanted:
            if key not in seen:
                out.append(f"{key}={wanted[key]}")
                seen.add(key)
            continue
        out.append(line)
    out.extend(f"{k}={v}" for k, v in wanted.items() if k not in seen)
    return "\n".join(out) + "\n"


def _json_secret(s: Secret) -> Secret:
    """The secret as a JSON/YAML double-quoted scalar (same name, escaped value)."""
    return Secret(s.name, json.dumps(s.value))


def _split_placeholder(text: str, placeholder: str, secret: Secret) -> tuple[str | Secret, ...]:
    before, sep, after = text.partition(placeholder)
    if not sep:
        raise AssertionError(f"template lost the {placeholder} placeholder")
    return (before, secret, after)


def _ids(values: list[int | str]) -> str:
    return ",".join(str(v) for v in values)


def render_app(
    app: AppConfig,
    *,
    stack: StackSection | None = None,
    stack_name: str | None = None,
    secrets: Mapping[str, Secret],
) -> AppSpec:
    """The files, images and services of ``app`` for one stack."""
    name = stack.name if stack is not None else (stack_name or "app")
    mounts = [m.path for m in stack.mount] if stack is not None else []
    if isinstance(app, HermesApp):
        return _render_hermes(app, name, mounts, secrets)
    return _render_litellm(app, name, secrets)


def _render_hermes(
    app: HermesApp, name: str, stack_mounts: list[str], secrets: Mapping[str, Secret]
) -> AppSpec:
    project = app.project_dir or "/opt/hermes-stack"
    gid = app.gid if app.gid is not None else app.uid
    image = app.image_ref(HERMES_DEFAULT_IMAGE)
    mounts = app.mounts if app.mounts is not None else stack_mounts
    mounts = [m for m in mounts if m.rstrip("/") != app.data_dir]
    compose = _render(
        "hermes-compose.yml.j2",
        stack_name=name,
        image=image,
        container=app.container,
        restart=app.restart,
        shm_size=app.shm_size,
        uid=app.uid,
        gid=gid,
        data_dir=app.data_dir,
        env_file=f"{project}/hermes.env",
        mounts=mounts,
        memory_limit=app.memory_limit,
        cpus=app.cpus,
        pids_limit=app.pids_limit,
    )
    config = _render(
        "hermes-config.yaml.j2",
        stack_name=name,
        provider=app.provider,
        default_model=app.default_model,
        gateway_url=app.gateway_url,
        key_env=app.key_env,
        workspace=app.workspace,
    )
    # .env: what the stack file sets (others already in the file are kept)
    env: dict[str, str | Secret] = {}
    key = _secret(secrets, app.gateway_key, "stack.app.gateway_key", required=True)
    assert key is not None
    env[app.key_env] = key
    platforms: list[str] = []
    used: list[Secret] = [key]
    if app.telegram is not None:
        tok = _secret(secrets, app.telegram.token, "stack.app.telegram.token", required=False)
        if tok is not None:
            env["TELEGRAM_BOT_TOKEN"] = tok
            used.append(tok)
            platforms.append("telegram")
            if app.telegram.allowed_users:
                env["TELEGRAM_ALLOWED_USERS"] = _ids(app.telegram.allowed_users)
    if app.discord is not None:
        tok = _secret(secrets, app.discord.token, "stack.app.discord.token", required=False)
        if tok is not None:
            env["DISCORD_BOT_TOKEN"] = tok
            used.append(tok)
            platforms.append("discord")
            if app.discord.allowed_users:
                env["DISCORD_ALLOWED_USERS"] = _ids(app.discord.allowed_users)
            if app.discord.allowed_roles:
                env["DISCORD_ALLOWED_ROLES"] = _ids(app.discord.allowed_roles)
    if app.slack is not None:
        bot = _secret(secrets, app.slack.bot_token, "stack.app.slack.bot_token", required=False)
        tok_app = _secret(secrets, app.slack.app_token, "stack.app.slack.app_token", required=False)
        if bot is not None and tok_app is not None:
            env["SLACK_BOT_TOKEN"] = bot
            env["SLACK_APP_TOKEN"] = tok_app
            used += [bot, tok_app]
            platforms.append("slack")
            if app.slack.allowed_users:
                env["SLACK_ALLOWED_USERS"] = ",".join(app.slack.allowed_users)
    if app.gateway_allowed_users:
        env["GATEWAY_ALLOWED_USERS"] = _ids(app.gateway_allowed_users)
    env.update(app.env)
    plain_env = (
        f"# Rendered by pvestack (recipe hermes) for stack {name}: no secrets here.\n"
        f"HERMES_HOME=/opt/data\nHERMES_UID={app.uid}\nHERMES_GID={gid}\n"
    )
    svc = ("hermes",)
    files = (
        # compose.yml and the env_file: `compose up -d` recreates what they change
        AppFile(f"{project}/compose.yml", (compose,), "0644", 0, 0),
        AppFile(f"{project}/hermes.env", (plain_env,), "0644", 0, 0),
        AppFile(f"{app.data_dir}/config.yaml", (config,), "0640", app.uid, gid, svc),
        AppFile(f"{app.data_dir}/.env", env_lines(env), "0600", app.uid, gid, svc, merge_env=True),
    )
    return AppSpec(
        recipe="hermes",
        project_dir=project,
        files=files,
        images=(ImageSource(image, app.image_tarball),),
        docker_source=app.docker,
        services=svc,
        secrets=tuple(used),
        verify=frozen_map(
            {
                "project": project_name(name),
                "data_dir": app.data_dir,
                "container": app.container,
                "gateway_url": app.gateway_url,
                "default_model": app.default_model,
                "key_env": app.key_env,
                "platforms": ",".join(platforms),
                "uid": str(app.uid),
                "gid": str(gid),
            }
        ),
    )


def _render_litellm(app: LiteLLMApp, name: str, secrets: Mapping[str, Secret]) -> AppSpec:
    project = app.project_dir or "/opt/litellm-stack"
    image = app.image_ref(LITELLM_DEFAULT_IMAGE)
    master = _secret(secrets, app.master_key, "stack.app.master_key", required=True)
    assert master is not None
    used: list[Secret] = [master]
    models: list[dict[str, Any]] = []
    placeholders: dict[str, Secret] = {}
    for i, m in enumerate(app.models):
        params: dict[str, Any] = {"model": m.model}
        if m.mock_response is not None:
            params["mock_response"] = m.mock_response
        if m.api_base is not None:
            params["api_base"] = m.api_base
        if m.api_key is not None:
            k = _secret(secrets, m.api_key, f"stack.app.models[{i}].api_key", required=True)
            assert k is not None
            ph = f"@@PVESTACK_SECRET_{i}@@"
            placeholders[json.dumps(ph)] = _json_secret(k)
            params["api_key"] = ph
            used.append(k)
        models.append({"name": m.name, "litellm_params": params})
    master_ph = "@@PVESTACK_MASTER_KEY@@"
    text = _render(
        "litellm-config.yaml.j2",
        stack_name=name,
        models=models,
        master_key=master_ph,
    )
    parts: list[str | Secret] = list(_split_placeholder(text, master_ph, _json_secret(master)))
    for ph, sec in placeholders.items():
        new: list[str | Secret] = []
        for p in parts:
            if isinstance(p, str) and ph in p:
                a, _, b = p.partition(ph)
                new += [a, sec, b]
            else:
                new.append(p)
        parts = new
    config_path = f"{project}/config.yaml"
    compose = _render(
        "litellm-compose.yml.j2",
        stack_name=name,
        image=image,
        container=app.container,
        restart=app.restart,
        port=app.port,
        config_path=config_path,
        memory_limit=app.memory_limit,
        cpus=app.cpus,
    )
    svc = ("litellm",)
    files = (
        AppFile(f"{project}/compose.yml", (compose,), "0644", 0, 0),
        AppFile(config_path, tuple(parts), "0600", 0, 0, svc),
    )
    return AppSpec(
        recipe="litellm",
        project_dir=project,
        files=files,
        images=(ImageSource(image, app.image_tarball),),
        docker_source=app.docker,
        services=svc,
        secrets=tuple(used),
        verify=frozen_map(
            {
                "project": project_name(name),
                "port": str(app.port),
                "models": ",".join(m.name for m in app.models),
                "key_env": "LITELLM_MASTER_KEY",
                "container": app.container,
                "master_key": app.master_key,
            }
        ),
    )
