"""Stack file -> ``DesiredState``: PVE parameters, mounts, id map, mark; secrets resolved.

The token-safe parameters (``ContainerSpec.api_config``) are exactly what is
sent to ``POST /nodes/{node}/lxc`` besides vmid/ostemplate/unprivileged/
features/volume mounts, and what is compared with ``GET .../config``.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

from pvestack import recipes
from pvestack._commands import Secret
from pvestack._config import SecretSource, StackFile, StackSection, stack_idmap
from pvestack._errors import ConfigError, Problem, SecretError
from pvestack._model import (
    MARK_LINE_PREFIX,
    MARK_TAG,
    BindMount,
    ContainerSpec,
    DesiredState,
    IdMap,
    StackSpec,
    TemplateSpec,
    UpgradePolicy,
    VolumeMount,
)


def resolve_secret(
    name: str, source: SecretSource, *, env: Mapping[str, str] | None = None
) -> Secret | None:
    """Read one secret. ``None`` when it is optional and absent; ``SecretError`` otherwise."""
    environ = os.environ if env is None else env
    value: str | None = None
    if source.env is not None:
        value = environ.get(source.env)
        if not value and not source.optional:
            raise SecretError(
                f"secret {name}: environment variable {source.env} is not set",
                hint=f"export {source.env}=... (or point the stack file at a file)",
            )
    elif source.file is not None:
        path = os.path.expanduser(source.file)
        try:
            with open(path, encoding="utf-8") as fh:
                value = fh.read().strip()
        except FileNotFoundError:
            if not source.optional:
                raise SecretError(f"secret {name}: file {path} does not exist") from None
        except OSError as e:
            raise SecretError(f"secret {name}: cannot read {path}: {e.strerror}") from None
    elif source.command is not None:
        try:
            out = subprocess.run(  # argv from the stack file, no shell
                source.command, capture_output=True, text=True, timeout=60, check=False
            )
        except OSError as e:
            raise SecretError(f"secret {name}: cannot run {source.command[0]}: {e}") from None
        if out.returncode != 0:
            raise SecretError(
                f"secret {name}: command {source.command[0]} failed (exit {out.returncode})"
            )
        value = out.stdout.strip()
    if not value:
        return None
    return Secret(name, value)


def resolve_secrets(cfg: StackFile, *, env: Mapping[str, str] | None = None) -> dict[str, Secret]:
    out: dict[str, Secret] = {}
    for name, src in cfg.secrets.items():
        s = resolve_secret(name, src, env=env)
        if s is not None:
            out[name] = s
    return out


def token_secret(cfg: StackFile, *, env: Mapping[str, str] | None = None) -> Secret:
    s = resolve_secret("pve.token_secret", cfg.pve.token_secret, env=env)
    if s is None:
        raise SecretError(
            "the API token secret is empty",
            hint="set PVESTACK_TOKEN_SECRET or pve.token_secret = { env|file = ... }",
        )
    return s


# ---------------------------------------------------------------- containers


def mark_description(description: str, stack: str) -> str:
    text = description.rstrip()
    line = f"{MARK_LINE_PREFIX}{stack}"
    return f"{text}\n{line}" if text else line


def net0_value(st: StackSection) -> str:
    n = st.network
    v = f"name=eth0,bridge={n.bridge},ip={n.ipv4}"
    if n.gateway:
        v += f",gw={n.gateway}"
    if n.ipv6:
        v += f",ip6={n.ipv6}"
    if n.gateway6:
        v += f",gw6={n.gateway6}"
    if n.vlan is not None:
        v += f",tag={n.vlan}"
    if n.firewall is not None:
        v += f",firewall={int(n.firewall)}"
    if n.mtu is not None:
        v += f",mtu={n.mtu}"
    return v


def features_map(st: StackSection) -> dict[str, str]:
    f = st.features
    out: dict[str, str] = {}
    for key in ("fuse", "keyctl", "mknod", "nesting", "force_rw_sys"):
        if getattr(f, key):
            out[key] = "1"
    if f.mount:
        out["mount"] = ";".join(f.mount)
    return dict(sorted(out.items()))


def tags_value(st: StackSection) -> str:
    tags = {t.lower() for t in st.tags} | {MARK_TAG}
    return ";".join(sorted(tags))


def _idmap(st: StackSection) -> IdMap:
    return stack_idmap(st)


def container_spec(st: StackSection) -> ContainerSpec:
    api: dict[str, str | int] = {
        "hostname": st.resolved_hostname,
        "cores": st.cores,
        "memory": st.memory,
        "swap": st.swap,
        "rootfs": f"{st.datastore}:{st.disk_gb}",
        "net0": net0_value(st),
        "onboot": int(st.onboot),
        "tags": tags_value(st),
        "description": mark_description(st.description, st.name),
    }
    if st.dns:
        api["nameserver"] = " ".join(st.dns)
    if st.searchdomain:
        api["searchdomain"] = st.searchdomain
    binds: list[BindMount] = []
    volumes: list[VolumeMount] = []
    for i, m in enumerate(st.mount):
        key = f"mp{i}"
        if m.host_path is not None:
            binds.append(
                BindMount(
                    key=key,
                    host_path=m.host_path,
                    ct_path=m.path,
                    read_only=m.read_only,
                    owner_uid=m.uid,
                    owner_gid=m.uid if m.gid is None else m.gid,
                    mode=m.mode if len(m.mode) == 4 else "0" + m.mode,
                    backup=m.backup,
                    shared=m.shared,
                    take_ownership=m.take_ownership,
                )
            )
        elif m.volume is not None:
            volumes.append(
                VolumeMount(
                    key=key,
                    storage=m.volume.storage,
                    size_gb=m.volume.size_gb,
                    ct_path=m.path,
                    backup=m.backup,
                )
            )
    t = st.template
    template = TemplateSpec(
        storage=t.storage,
        url=t.url or "",
        filename=t.resolved_filename,
        checksum=t.checksum,
        checksum_algorithm=t.checksum_algorithm,
        appliance=t.appliance,
    )
    return ContainerSpec(
        stack=st.name,
        node=st.node,
        vmid=st.vmid if isinstance(st.vmid, int) else None,
        hostname=st.resolved_hostname,
        api_config=api,
        features=features_map(st),
        template=template,
        bind_mounts=tuple(binds),
        volume_mounts=tuple(volumes),
        idmap=_idmap(st),
        unprivileged=st.unprivileged,
        start=st.start,
        protection=st.protection,
    )


def _app_problem(cfg: StackFile, index: int, p: Problem) -> Problem:
    """A recipe's problem, re-anchored at ``stack[i].app...`` with file and line."""
    key = p.key
    if key == "stack.app" or key.startswith("stack.app."):
        key = f"stack[{index}]" + key[len("stack") :]
    elif not key.startswith("stack"):
        key = f"stack[{index}].app.{key}".rstrip(".")
    loc: list[str | int] = []
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        loc.append(int(part[1:-1]) if part.startswith("[") else part)
    return Problem(cfg.source_file or p.file, key, p.message, p.line or cfg.line_of(loc))


def _load_apps(cfg: StackFile) -> dict[int, Any]:
    """Every ``[stack.app]`` validated by its recipe, once (``ConfigError`` lists all)."""
    problems: list[Problem] = []
    apps: dict[int, Any] = {}
    for i, st in enumerate(cfg.stack):
        if st.app is None:
            continue
        try:
            apps[i] = recipes.load_app(st.app, stack_name=st.name)
        except ConfigError as e:
            problems.extend(_app_problem(cfg, i, p) for p in e.problems)
    if problems:
        raise ConfigError(problems)
    return apps


def check_apps(cfg: StackFile) -> None:
    """Validate every ``[stack.app]`` without resolving secrets (``ConfigError``)."""
    _load_apps(cfg)


def build_desired(
    cfg: StackFile,
    *,
    source: str = "",
    env: Mapping[str, str] | None = None,
    with_apps: bool = True,
    secrets: Mapping[str, Secret] | None = None,
) -> DesiredState:
    """The desired state of every stack; each app validated and rendered once.

    ``secrets``: the resolved ``[secrets]`` (a session resolves them once per run);
    None: resolved here, after the apps are validated (``SecretError``). ``with_apps``
    False: containers only, no secret is read (destroy needs none)."""
    apps = _load_apps(cfg) if with_apps else {}
    if apps and secrets is None:
        secrets = resolve_secrets(cfg, env=env)
    stacks = []
    for i, st in enumerate(cfg.stack):
        app = None
        if i in apps:
            try:
                app = recipes.render_app(apps[i], stack=st, secrets=secrets or {})
            except ConfigError as e:
                raise ConfigError([_app_problem(cfg, i, p) for p in e.problems]) from None
        stacks.append(
            StackSpec(
                name=st.name,
                container=container_spec(st),
                app=app,
                depends_on=tuple(st.depends_on),
                upgrade=UpgradePolicy(
                    keep=st.snapshots.keep,
                    backup_before=st.backup.before_upgrade,
                    backup_storage=st.backup.storage,
                ),
            )
        )
    return DesiredState(stacks=tuple(stacks), source=source or cfg.source_file)
