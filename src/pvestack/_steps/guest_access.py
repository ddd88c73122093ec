"""Root steps that open the guest's own SSH door, and the host-key record (pure builders).

With ``guest.via = "ssh"`` pvestack reaches the container's root directly (the
container's root is unprivileged: host uid 100000), not through the node. Three root
steps (run by the console script or the root SSH transport, both through ``pct exec``)
prepare that, none carries a secret:

1. ``sshd_step``: an SSH server in the container (installed and enabled if the template
   lacks one; host keys generated).
2. ``authorized_key_step``: the stack's public key in ``/root/.ssh/authorized_keys``
   (needed only for containers created without ``ssh-public-keys``: adopted ones, or
   made by another tool).
3. ``hostkey_record_step``: reads the container's ed25519 host key fingerprint as root on
   the node and records it in the container's description as the line
   ``pvestack-hostkey: SHA256:...`` next to the ownership mark, where the token reads it
   through the API. The guest transport pins exactly that fingerprint.

The description is written with ``pct set VMID -description TEXT``. The text is the
description as the API showed it when planning (``observed_description``), with any
earlier record replaced; the fingerprint is filled in on the node at run time. So
everything except the record line is kept byte for byte (up to trailing newlines,
which PVE drops itself when it stores a description).

The pure functions on descriptions (``parse_hostkey_record``, ``strip_hostkey_record``,
``description_with_record``, ``keep_hostkey_record``) are what observe/plan use: the
planner must keep the record when it rewrites the description
(``keep_hostkey_record(desired, observed)``) and must ignore it when comparing.
"""

from __future__ import annotations

import re

from pvestack._commands import Command, Step, cmd
from pvestack._errors import HostKeyError

HOSTKEY_PREFIX = "pvestack-hostkey: "
MARK_PREFIX = "pvestack-stack: "  # the ownership mark (pvestack._model.MARK_LINE_PREFIX)
HOSTKEY_PUB = "/etc/ssh/ssh_host_ed25519_key.pub"
#: OpenSSH's SHA-256 fingerprint: 32 bytes, base64 without padding (43 characters)
FINGERPRINT_RE = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
_RECORD_RE = re.compile(r"^pvestack-hostkey:")

# ---------------------------------------------------------------- descriptions (pure)


def _lines(description: str) -> list[str]:
    return description.rstrip("\n").split("\n") if description.strip("\n") else []


def parse_hostkey_record(description: str) -> str | None:
    """The pinned fingerprint recorded in ``description``, or None when there is none.

    The record is exactly one line ``pvestack-hostkey: SHA256:<43 base64 chars>``.
    A malformed record, or two records that differ, raise ``HostKeyError``: a pin is
    never guessed.
    """
    found: set[str] = set()
    for line in _lines(description):
        if not _RECORD_RE.match(line):
            continue
        value = line[len(HOSTKEY_PREFIX) :] if line.startswith(HOSTKEY_PREFIX) else ""
        if not FINGERPRINT_RE.match(value):
            raise HostKeyError(
                f"the container's host-key record {line!r} is malformed "
                "(expected 'pvestack-hostkey: SHA256:' and 43 base64 characters)",
                hint="run the root steps again (console script or root SSH): they rewrite it",
            )
        found.add(value)
    if len(found) > 1:
        raise HostKeyError(
            "the container's description holds two different host-key records: "
            + ", ".join(sorted(found)),
            hint="remove the wrong line from the description, or run the root steps again",
        )
    return found.pop() if found else None


def strip_hostkey_record(description: str) -> str:
    """``description`` without its record line(s); every other line as it was."""
    return "\n".join(ln for ln in _lines(description) if not _RECORD_RE.match(ln))


def _split(description: str) -> tuple[str, str]:
    """(lines up to and including the mark, the lines after it), the record removed.
    Without a mark the record goes last."""
    lines = _lines(strip_hostkey_record(description))
    for i, ln in enumerate(lines):
        if ln.startswith(MARK_PREFIX):
            return "\n".join(lines[: i + 1]), "\n".join(lines[i + 1 :])
    return "\n".join(lines), ""


def description_with_record(description: str, fingerprint: str) -> str:
    """``description`` with the record line for ``fingerprint`` right after the mark."""
    if not FINGERPRINT_RE.match(fingerprint):
        raise ValueError(f"not an OpenSSH SHA256 fingerprint: {fingerprint!r}")
    head, tail = _split(description)
    parts = [p for p in (head, HOSTKEY_PREFIX + fingerprint, tail) if p]
    return "\n".join(parts)


def keep_hostkey_record(desired: str, observed: str) -> str:
    """The description to send when the planner rewrites it: ``desired`` plus the record
    ``observed`` holds (so a description update never drops the pin). A malformed record
    is dropped (the root step writes a new one; the guest transport refuses meanwhile)."""
    base = strip_hostkey_record(desired)
    try:
        fp = parse_hostkey_record(observed)
    except HostKeyError:
        return base
    return description_with_record(base, fp) if fp else base


def ssh_public_keys_param(public_key: str | None) -> dict[str, str]:
    """The create parameter carrying the stack's public key (token-safe: PVE's
    ``ssh-public-keys`` at ``POST /nodes/{node}/lxc`` needs no root). Empty without a key.

    One OpenSSH public key line (``ssh-ed25519 AAAA... comment``); PVE writes it to the
    container's ``/root/.ssh/authorized_keys``.
    """
    if public_key is None:
        return {}
    key = public_key.strip()
    if "\n" in key or not re.match(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-\S+) [A-Za-z0-9+/=]+", key):
        raise ValueError(f"not one OpenSSH public key line: {key[:40]!r}")
    return {"ssh-public-keys": key}


# ---------------------------------------------------------------- shell programs (node side)

# $1 vmid. Exit 0 when an sshd and its ed25519 host key are in the container.
_SSHD_GUARD = (
    'pct exec "$1" -- sh -c '
    "'command -v sshd >/dev/null 2>&1 && test -s /etc/ssh/ssh_host_ed25519_key.pub' </dev/null"
)

# Run inside the container: install and enable an SSH server, make its host keys.
INSTALL_SSHD = """\
set -eu
if ! command -v sshd >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 update -q
  apt-get -o Acquire::http::Timeout=30 -o Acquire::Retries=3 install -y -q openssh-server
fi
ssh-keygen -A
systemctl enable --now ssh 2>/dev/null || systemctl enable --now sshd
"""

# Inside the container: $1 the public key line. Appended once, mode 600.
ADD_AUTHORIZED_KEY = """\
set -eu
umask 077
mkdir -p /root/.ssh
f=/root/.ssh/authorized_keys
if [ -f "$f" ] && grep -qxF -- "$1" "$f"; then exit 0; fi
printf '%s\\n' "$1" >>"$f"
chmod 600 "$f"
"""

# Node side: $1 vmid, $2 how many of the following arguments are the description's lines
# up to the mark, then those lines and the lines after the mark (one argument per line:
# no argument spans lines, so no rendering can shift it).
# Reads the container's ed25519 host key fingerprint, writes the description with the
# record line after the mark.
RECORD_HOSTKEY = """\
set -eu
vmid=$1 nhead=$2
shift 2
out=$(pct exec "$vmid" -- ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub </dev/null)
fp=$(printf '%s\\n' "$out" | awk '{ print $2; exit }')
case $fp in
  SHA256:*) ;;
  *) echo "cannot read the host key fingerprint of CT $vmid: $out" >&2; exit 1 ;;
esac
new=$(
  i=0
  for line in "$@"; do
    if [ "$i" -eq "$nhead" ]; then printf 'pvestack-hostkey: %s\\n' "$fp"; fi
    printf '%s\\n' "$line"
    i=$((i + 1))
  done
  if [ "$i" -eq "$nhead" ]; then printf 'pvestack-hostkey: %s\\n' "$fp"; fi
)
pct set "$vmid" -description "$new" </dev/null
echo "CT $vmid host key recorded: $fp"
"""

# Node side guard: $1 vmid. Exit 0 when the description already records the current key.
RECORD_GUARD = """\
set -u
out=$(pct exec "$1" -- ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub </dev/null) || exit 1
fp=$(printf '%s\\n' "$out" | awk '{ print $2; exit }')
case $fp in SHA256:*) ;; *) exit 1 ;; esac
pct config "$1" </dev/null | grep -F -- "pvestack-hostkey" | grep -qF -- "${fp#SHA256:}"
"""


def _sh(program: str, *args: str) -> Command:
    return cmd("sh", "-c", program, "sh", *args)


def _pct_sh(vmid: int, program: str, *args: str) -> Command:
    return cmd("pct", "exec", str(vmid), "--", "sh", "-c", program, "sh", *args)


# ---------------------------------------------------------------- steps


def sshd_step(vmid: int) -> Step:
    """An SSH server in the container, enabled, with host keys (apt if missing)."""
    return Step(
        f"ct{vmid}:guest-access:sshd",
        "an SSH server in the container (installed and enabled if the template lacks one)",
        (_pct_sh(vmid, INSTALL_SSHD),),
        guard=_sh(_SSHD_GUARD, str(vmid)),
    )


def authorized_key_step(vmid: int, public_key: str) -> Step:
    """The stack's public key in the container's ``/root/.ssh/authorized_keys`` (no secret)."""
    ssh_public_keys_param(public_key)  # validates: one key line
    key = public_key.strip()
    guard = cmd(
        "pct", "exec", str(vmid), "--", "grep", "-qxF", "--", key, "/root/.ssh/authorized_keys"
    )
    return Step(
        f"ct{vmid}:guest-access:authorized-key",
        f"authorize pvestack's key for the container's root ({key.split()[0]})",
        (_pct_sh(vmid, ADD_AUTHORIZED_KEY, key),),
        guard=guard,
    )


def hostkey_record_step(vmid: int, observed_description: str) -> Step:
    """Record the container's host key fingerprint in its description (kept otherwise)."""
    head, tail = _split(observed_description)
    lines = (str(len(_lines(head))), *_lines(head), *_lines(tail))
    return Step(
        f"ct{vmid}:guest-access:hostkey-record",
        "record the container's SSH host key fingerprint in its description "
        "(pvestack-hostkey: SHA256:...), for the guest transport to pin",
        (_sh(RECORD_HOSTKEY, str(vmid), *lines),),
        guard=_sh(RECORD_GUARD, str(vmid)),
    )


def guest_access_steps(
    vmid: int, observed_description: str, public_key: str | None, *, key_at_create: bool
) -> tuple[Step, ...]:
    """The root steps for ``guest.via = "ssh"``, in order. ``key_at_create``: the key went
    in with ``ssh-public-keys`` when pvestack created the container (then no key step)."""
    steps = [sshd_step(vmid)]
    if public_key is not None and not key_at_create:
        steps.append(authorized_key_step(vmid, public_key))
    steps.append(hostkey_record_step(vmid, observed_description))
    return tuple(steps)


def require_hostkey_record(description: str, vmid: int) -> str:
    """The pinned fingerprint of CT ``vmid``, or ``HostKeyError`` saying how to get one."""
    fp = parse_hostkey_record(description)
    if fp is None:
        raise HostKeyError(
            f"CT {vmid} has no host-key record yet (no 'pvestack-hostkey:' line in its "
            "description): pvestack does not connect to a container whose key it cannot check",
            hint=(
                "run the root steps: paste the console script (pvestack console-script -c FILE) "
                "into the node's shell as root, or let apply wait for it on a terminal; with "
                'root.via = "ssh" apply records the key itself'
            ),
        )
    return fp
