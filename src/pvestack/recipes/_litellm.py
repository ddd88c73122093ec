"""The ``litellm`` recipe: the LiteLLM proxy (``litellm[proxy]==1.82.6``) as a compose
project, its master key inside ``config.yaml`` (mode 600), the model list from the
stack file."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from pvestack._commands import Secret
from pvestack._model import AppFile, AppSpec, ImageSource
from pvestack._verifyspec import LiteLLMFacts
from pvestack.recipes._base import (
    AppBase,
    Strict,
    json_secret,
    project_name,
    render,
    secret,
    split_placeholder,
)

LITELLM_VERSION = "1.82.6"
LITELLM_DEFAULT_IMAGE = f"ghcr.io/berriai/litellm:main-v{LITELLM_VERSION}"
# litellm 1.82.7 and 1.82.8 were malicious releases (credential stealers).
LITELLM_BANNED = ("1.82.7", "1.82.8")


class LiteLLMModel(Strict):
    name: str = Field(description="the model_name clients ask for")
    model: str = Field(description="litellm_params.model, e.g. openai/gpt-4o-mini")
    mock_response: str | None = Field(default=None, description="answer every call (tests)")
    api_base: str | None = None
    api_key: str | None = Field(default=None, description="secret name of the upstream key")


class LiteLLMApp(AppBase):
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


def render_litellm(app: LiteLLMApp, name: str, secrets: Mapping[str, Secret]) -> AppSpec:
    project = app.project_dir or "/opt/litellm-stack"
    image = app.image_ref(LITELLM_DEFAULT_IMAGE)
    master = secret(secrets, app.master_key, "stack.app.master_key", required=True)
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
            k = secret(secrets, m.api_key, f"stack.app.models[{i}].api_key", required=True)
            assert k is not None
            ph = f"@@PVESTACK_SECRET_{i}@@"
            placeholders[json.dumps(ph)] = json_secret(k)
            params["api_key"] = ph
            used.append(k)
        models.append({"name": m.name, "litellm_params": params})
    master_ph = "@@PVESTACK_MASTER_KEY@@"
    text = render(
        "litellm-config.yaml.j2",
        stack_name=name,
        models=models,
        master_key=master_ph,
    )
    parts: list[str | Secret] = list(split_placeholder(text, master_ph, json_secret(master)))
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
    compose = render(
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
        verify=LiteLLMFacts(
            project=project_name(name),
            container=app.container,
            port=app.port,
            models=tuple(m.name for m in app.models),
            master_key=app.master_key,
        ),
    )
