"""App recipes: the stack file's ``[stack.app]`` section -> files and a compose project.

``load_app(raw, stack_name=...)`` validates the table with pydantic (``ConfigError``,
one ``Problem`` per bad key, the key relative to ``stack.app``: ``default_model``,
``telegram.token``...; ``_desired`` re-anchors it at ``stack[i].app.<key>`` with the
line). ``render_app(app, stack=..., secrets=...)`` renders the jinja2 templates into an
``AppSpec``: the files (secrets kept as ``Secret`` parts, never in text), the images,
the compose services, and what ``verify`` needs (a frozen ``HermesFacts`` /
``LiteLLMFacts``).

One private module per recipe (``_hermes``, ``_litellm``) over the shared ``_base``;
``_yamlkeys`` is the managed-keys YAML merge (also run inside the container).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from pvestack._commands import Secret
from pvestack._config import StackSection
from pvestack._errors import ConfigError, Problem
from pvestack._model import AppSpec
from pvestack.recipes import _yamlkeys
from pvestack.recipes._base import env_lines, merge_env, project_name
from pvestack.recipes._hermes import (
    CONFIG_VERSIONS,
    HERMES_DEFAULT_IMAGE,
    ApiServerApp,
    DashboardApp,
    HermesApp,
    render_hermes,
)
from pvestack.recipes._litellm import (
    LITELLM_BANNED,
    LITELLM_DEFAULT_IMAGE,
    LITELLM_VERSION,
    LiteLLMApp,
    render_litellm,
)

__all__ = [
    "CONFIG_VERSIONS",
    "HERMES_DEFAULT_IMAGE",
    "LITELLM_BANNED",
    "LITELLM_DEFAULT_IMAGE",
    "LITELLM_VERSION",
    "ApiServerApp",
    "AppConfig",
    "DashboardApp",
    "HermesApp",
    "LiteLLMApp",
    "app_json_schema",
    "changed_yaml_keys",
    "env_lines",
    "load_app",
    "managed_yaml_digest",
    "managed_yaml_paths",
    "merge_env",
    "merge_yaml",
    "project_name",
    "render_app",
    "yaml_merge_program",
]

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
        return render_hermes(app, name, mounts, secrets)
    return render_litellm(app, name, secrets)


# ---------------------------------------------------------------- managed YAML keys


def managed_yaml_paths(desired_text: str) -> tuple[tuple[str, ...], ...]:
    """The key paths pvestack owns in a YAML file it renders (its leaves)."""
    return tuple(_yamlkeys.leaves(_yamlkeys.load(desired_text)))


def managed_yaml_digest(text: str, paths: tuple[tuple[str, ...], ...]) -> str:
    """The managed keys' digests of ``text``, as the guest's fact prints them (one line)."""
    return _yamlkeys.dumps(_yamlkeys.text_digests(text, list(paths)))


def changed_yaml_keys(desired_text: str, fact: str) -> tuple[str, ...]:
    """The managed keys (dotted) whose value in the guest (``fact``: the guest's digest
    line) differs from ``desired_text``'s."""
    paths = list(managed_yaml_paths(desired_text))
    want = _yamlkeys.text_digests(desired_text, paths)
    have = _yamlkeys.loads(fact)
    return tuple(".".join(p) for p in paths if have.get(p) != want[p])


def merge_yaml(existing: str | None, desired_text: str) -> str | None:
    """The merged file text, or None when the managed keys already hold their values."""
    return _yamlkeys.merge(existing, desired_text)


def yaml_merge_program() -> str:
    """The Python program (stdlib + PyYAML) the guest runs to merge or digest."""
    return _yamlkeys.program()
