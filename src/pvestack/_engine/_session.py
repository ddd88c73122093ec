"""One session per run: the stack file loaded once, secrets resolved once, each app
validated once, the client and the root transport opened once (and lazily)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pvestack._client import CallHook, ClientSettings, PveClient
from pvestack._commands import Secret
from pvestack._config import StackFile, load_config
from pvestack._desired import build_desired, token_secret
from pvestack._errors import PvestackError
from pvestack._model import DesiredState
from pvestack.executors import GuestTransport, RootTransport

if TYPE_CHECKING:
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
    def root(self) -> RootAccess:
        if self._root is None:
            self._root = self._root_opener(self.cfg)
        return self._root

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
        if self._root is not None and self._root.transport is not None:
            self._root.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
