"""One session per run: the stack file loaded once, secrets resolved once, each app
validated once, the client and the root transport opened once (and lazily)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pvestack._client import CallHook, ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._config import StackFile, load_config
from pvestack._desired import build_desired, token_secret
from pvestack._engine._guest import GuestRouter, ssh_opener
from pvestack._errors import PvestackError
from pvestack._guest_settings import (
    GuestSettings,
    key_dir,
    load_key,
    resolve_guest_settings,
    stack_key,
)
from pvestack._model import DesiredState, GuestAccess
from pvestack.executors import GuestTransport, RootTransport

if TYPE_CHECKING:
    from pvestack._engine._guest import GuestPlace
    from pvestack.executors._ssh import SshSettings


@dataclass(frozen=True)
class Options:
    """The options every command shares (declared once in the CLI)."""

    config: Path = Path("pvestack.toml")
    overrides: Mapping[str, str] = field(default_factory=dict)  # OVERRIDE_NAMES -> value
    insecure: bool = False
    adopt: bool = False


@dataclass(frozen=True)
class RootAccess:
    """The root transport, or why there is none; and the guest transport (the seam for a
    transport that reaches the guest directly; today the root one: pct exec/push)."""

    transport: RootTransport | None
    reason: str = ""
    via: str = ""
    guest: GuestTransport | None = None

    @property
    def guest_transport(self) -> GuestTransport | None:
        return self.guest if self.guest is not None else self.transport


def client_settings(cfg: StackFile, token: Secret, *, insecure: bool = False) -> ClientSettings:
    return ClientSettings(
        api_url=cfg.pve.api_url,
        token_id=cfg.pve.token_id,
        token_secret=token,
        fingerprint=cfg.pve.fingerprint,
        ca_file=cfg.pve.ca_file,
        insecure=insecure or cfg.pve.insecure,
        timeout=cfg.pve.timeout,
    )


def ssh_settings(cfg: StackFile) -> SshSettings:
    """``[root.ssh]`` as the SSH executor's settings (environment overrides are applied
    once, by ``_config``). Imports paramiko: only when SSH is used."""
    from pvestack.executors._ssh import SshSettings  # noqa: PLC0415

    s = cfg.root.ssh
    return SshSettings(
        host=s.host or "", port=s.port, user=s.user, key_file=s.key_file,
        known_hosts=s.known_hosts,
    )  # fmt: skip


def open_root(cfg: StackFile) -> RootAccess:
    via = cfg.root.via
    if via == "none":
        return RootAccess(None, 'root.via = "none": root steps are left to you', via)
    if via == "console":
        return RootAccess(
            None,
            'root.via = "console": run the printed script in the node\'s shell '
            "(pvestack console-script)",
            via,
        )
    from pvestack.executors import open_ssh_transport  # noqa: PLC0415

    try:
        transport = open_ssh_transport(ssh_settings(cfg))
    except PvestackError as e:
        return RootAccess(None, f"SSH to {cfg.root.ssh.host} failed: {e}", via)
    return RootAccess(transport, "", via)


class Session:
    """Everything a run reads once. Close it (or use ``with``) to close the transport."""

    def __init__(
        self,
        cfg: StackFile,
        options: Options,
        *,
        on_call: CallHook | None = None,
        env: Mapping[str, str] | None = None,
        root_opener: Callable[[StackFile], RootAccess] = open_root,
    ) -> None:
        self.cfg = cfg
        self.options = options
        self._on_call = on_call
        self._env = env
        self._root_opener = root_opener
        self._client: PveClient | None = None
        self._root: RootAccess | None = None
        self._desired: DesiredState | None = None
        self._containers: DesiredState | None = None
        self._router: GuestRouter | None = None

    @classmethod
    def load(cls, options: Options, **kw: object) -> Session:
        """Load the stack file once, environment and flag overrides applied (``_config``)."""
        cfg = load_config(options.config, overrides=options.overrides)
        return cls(cfg, options, **kw)  # type: ignore[arg-type]

    @property
    def client(self) -> PveClient:
        if self._client is None:
            token = token_secret(self.cfg, env=self._env)
            settings = client_settings(self.cfg, token, insecure=self.options.insecure)
            self._client = PveClient(settings, on_call=self._on_call)
        return self._client

    @property
    def guest_settings(self) -> GuestSettings:
        return resolve_guest_settings(self.cfg)

    @property
    def root(self) -> RootAccess:
        """The root transport; with ``guest.via = "ssh"`` its ``guest`` is the router
        that opens one SSH transport per container (``_guest``)."""
        if self._root is None:
            root = self._root_opener(self.cfg)
            settings = self.guest_settings
            if settings.via == "ssh":

                def opener(p: GuestPlace) -> GuestTransport:
                    return ssh_opener(settings, self.client, self._env)(p)

                self._router = GuestRouter(opener, root.transport)
                root = replace(root, guest=self._router)
            self._root = root
        return self._root

    @property
    def router(self) -> GuestRouter | None:
        """The SSH guest router (``guest.via = "ssh"``), else None."""
        _ = self.root
        return self._router

    def guest_access(self, *, generate: bool) -> dict[str, GuestAccess]:
        """Each stack's guest route and public key. ``generate`` (apply only): make the
        per-stack key pair when missing; plan never writes a file (None: not made yet)."""
        settings = self.guest_settings
        refused = self._router.refused if self._router is not None else set()
        out: dict[str, GuestAccess] = {}
        for spec in self.containers.stacks:
            key: str | None = None
            if settings.via == "ssh":
                if generate:
                    key = stack_key(settings, spec.name, self._env).public_key
                elif settings.key_file:
                    key = load_key(settings.key_file).public_key
                elif (key_dir(self._env) / spec.name).exists():
                    key = load_key(key_dir(self._env) / spec.name).public_key
            out[spec.name] = GuestAccess(settings.via, key, spec.name in refused)
        return out

    @property
    def desired(self) -> DesiredState:
        """Stacks with their apps: apps validated, secrets resolved, once per session."""
        if self._desired is None:
            self._desired = build_desired(self.cfg, env=self._env, with_apps=True)
        return self._desired

    @property
    def containers(self) -> DesiredState:
        """Stacks without apps (no secret read): what destroy needs."""
        if self._desired is not None:
            return self._desired
        if self._containers is None:
            self._containers = build_desired(self.cfg, with_apps=False)
        return self._containers

    @property
    def client_warnings(self) -> tuple[str, ...]:
        """What the client warned about (``--insecure``), once it was made."""
        return tuple(self._client.warnings) if self._client is not None else ()

    def close(self) -> None:
        if self._router is not None:
            self._router.close()
        if self._root is not None and self._root.transport is not None:
            self._root.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
