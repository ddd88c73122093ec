"""What every recipe shares: the common ``[stack.app]`` keys, image pinning, secrets,
``.env`` lines and the jinja2 rendering."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pvestack._commands import Secret, comment
from pvestack._config import check_path
from pvestack._errors import SecretError

SIZE = re.compile(r"^\d+(\.\d+)?[bkmgBKMG]?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_image(ref: str) -> str:
    ref = ref.strip()
    if not ref or any(c.isspace() for c in ref):
        raise ValueError("an image reference has no spaces")
    name, _, tag = ref.rpartition(":") if "@" not in ref else (ref, "", "")
    if "@" in ref:
        return ref
    if not name or "/" in tag:  # no tag at all ("repo/name" or "host:5000/name")
        raise ValueError(f"pin the image with a tag (e.g. {ref}:v1.2.3), not an implicit latest")
    return ref


class AppBase(Strict):
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
        if v is not None and not SIZE.fullmatch(v):
            raise ValueError("a size like 512m or 3g")
        return v

    @field_validator("image_tarball")
    @classmethod
    def _tarball(cls, v: str | None) -> str | None:
        if v is not None:
            check_path(v, "image_tarball", absolute=False, pve=False)
        return v

    def image_ref(self, default: str) -> str:
        ref = check_image(self.image or default)
        if ref.endswith(":latest") and not self.allow_latest:
            raise ValueError("the tag `latest` is not pinned: name a release or set allow_latest")
        return ref


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


def render(template: str, **ctx: Any) -> str:
    return _env().get_template(template).render(**ctx)


def project_name(stack_name: str) -> str:
    """The compose project name for a stack (compose: lowercase, digits, '-', '_')."""
    name = re.sub(r"[^a-z0-9_-]", "-", stack_name.lower()).strip("-_")
    return name or "app"


def secret(secrets: Mapping[str, Secret], name: str, what: str, *, required: bool) -> Secret | None:
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


def json_secret(s: Secret) -> Secret:
    """The secret as a JSON/YAML double-quoted scalar (same name, escaped value)."""
    return Secret(s.name, json.dumps(s.value))


def split_placeholder(text: str, placeholder: str, secret: Secret) -> tuple[str | Secret, ...]:
    before, sep, after = text.partition(placeholder)
    if not sep:
        raise AssertionError(f"template lost the {placeholder} placeholder")
    return (before, secret, after)


def ids(values: list[int | str]) -> str:
    return ",".join(str(v) for v in values)
