"""What verify needs to know of a rendered app: one frozen value per recipe.

Made by the recipes (``pvestack.recipes``) next to the files they render, carried by
``AppSpec.verify`` and read by ``pvestack.verify``; no stage parses a string back.
"""

from __future__ import annotations

from dataclasses import dataclass

from pvestack._commands import Secret


@dataclass(frozen=True)
class ApiServerFacts:
    """Hermes's OpenAI-compatible API server, when the stack enables it."""

    port: int
    key: Secret  # the Bearer key (from [secrets])
    model: str = "hermes-agent"  # the model name the API server announces


@dataclass(frozen=True)
class HermesFacts:
    project: str  # the compose project name
    data_dir: str  # in the CT, bound to /opt/data
    container: str
    gateway_url: str
    default_model: str
    key_env: str
    uid: int
    gid: int
    platforms: tuple[str, ...] = ()  # the messaging platforms with a token
    api_server: ApiServerFacts | None = None
    dashboard_port: int | None = None


@dataclass(frozen=True)
class LiteLLMFacts:
    project: str
    container: str
    port: int
    models: tuple[str, ...]
    master_key: str  # the [secrets] name of the master key


AppFacts = HermesFacts | LiteLLMFacts
