"""The guest route and its key: ``[guest]`` resolved, and the per-stack SSH key pair.

``resolve_guest_settings(cfg)`` gives ``GuestSettings``: ``via`` (``ssh`` straight into
the container as its root, or ``pct`` through the root transport; default ``ssh`` when
``root.via = "console"``, ``pct`` otherwise), the key, the port and the time limits.

Keys. Either the user's own private key (``[guest] key_file``), or a per-stack ed25519
key pair pvestack generates once (``ensure_stack_key``) in the operator's config
directory: ``$XDG_CONFIG_HOME/pvestack/keys/<stack>`` (else ``~/.config/...``), the
directory mode 700, the private key 600, the public key beside it as ``<stack>.pub``.
A key file that others may read, or a key directory others may enter, is refused with
the ``chmod`` that fixes it (as OpenSSH refuses loose private keys); so is a file that
cannot be read. The public key goes to the container at create (``ssh-public-keys``)
or by a root step (``pvestack._steps.guest_access.authorized_key_step``).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pvestack._config import StackFile
from pvestack._errors import SecretError


@dataclass(frozen=True)
class GuestSettings:
    via: Literal["ssh", "pct"]
    key_file: str | None  # the user's own key; None: the per-stack generated key
    port: int = 22
    connect_timeout: float = 15.0
    command_timeout: float = 1800.0


def resolve_guest_settings(cfg: StackFile) -> GuestSettings:
    g = cfg.guest
    via = g.via or ("ssh" if cfg.root.via == "console" else "pct")
    return GuestSettings(
        via=via,
        key_file=g.key_file,
        port=g.port,
        connect_timeout=g.connect_timeout,
        command_timeout=g.command_timeout,
    )


@dataclass(frozen=True)
class KeyPair:
    """A private key file (checked: mode 600 or stricter, readable) and its public key line."""

    private_path: Path
    public_key: str


def key_dir(env: Mapping[str, str] | None = None) -> Path:
    e = os.environ if env is None else env
    base = e.get("XDG_CONFIG_HOME") or os.path.join(
        e.get("HOME") or os.path.expanduser("~"), ".config"
    )
    return Path(base) / "pvestack" / "keys"


def _check_dir(d: Path) -> None:
    st = d.stat()
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise SecretError(
            f"the key directory {d} is open to others (mode {stat.S_IMODE(st.st_mode):03o})",
            hint=f"chmod 700 {d}",
        )


def check_private_key(path: Path) -> None:
    """Refuse a private key others may read or write, or one this user cannot read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise SecretError(f"the SSH key file {path} does not exist") from None
    except OSError as e:
        raise SecretError(f"cannot read the SSH key file {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecretError(f"the SSH key file {path} is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SecretError(
            f"the SSH key file {path} is readable or writable by others (mode {mode:03o}): "
            "refusing to use it",
            hint=f"chmod 600 {path}",
        )
    if not os.access(path, os.R_OK):
        raise SecretError(
            f"cannot read the SSH key file {path} (owner uid {st.st_uid}, mode {mode:03o})",
            hint=f"run pvestack as the key's owner, or chown it to uid {os.getuid()}",
        )


def _public_of(path: Path) -> str:
    """The public key line of ``path``: ``path.pub`` if present, else derived."""
    pub = path.with_name(path.name + ".pub")
    if pub.is_file():
        try:
            line = pub.read_text().strip()
        except OSError as e:
            raise SecretError(f"cannot read the public key {pub}: {e.strerror}") from None
        if line:
            return line.splitlines()[0]
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415  (lazy)

    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as e:
        raise SecretError(
            f"cannot read the SSH key {path}: {e} (a passphrase-protected key needs its "
            f"public key beside it as {pub.name})"
        ) from None
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def load_key(path: str | Path) -> KeyPair:
    """The user's own key (``[guest] key_file``), checked."""
    p = Path(os.path.expanduser(str(path)))
    check_private_key(p)
    return KeyPair(p, _public_of(p))


def ensure_stack_key(stack: str, env: Mapping[str, str] | None = None) -> KeyPair:
    """The per-stack key pair, generated on first use (ed25519, no passphrase)."""
    d = key_dir(env)
    path = d / stack
    if path.exists():
        _check_dir(d)
        return load_key(path)
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415  (lazy)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    _check_dir(d)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    line = f"{public.decode()} pvestack-{stack}"
    tmp = path.with_name(f".{stack}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private)
    os.replace(tmp, path)
    pub = path.with_name(stack + ".pub")
    pub.write_text(line + "\n")
    return KeyPair(path, line)


def stack_key(settings: GuestSettings, stack: str, env: Mapping[str, str] | None = None) -> KeyPair:
    """The key the guest route of ``stack`` uses: the user's own, or the per-stack one."""
    if settings.key_file:
        return load_key(settings.key_file)
    return ensure_stack_key(stack, env)
