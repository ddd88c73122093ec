"""Users, API tokens, tickets and privileges of the lab node (pve-access-control's rules).

The lab keeps them in ``<lab>/etc/pve/lab-auth.json`` (mode 600)::

    {"key": "<hex HMAC key>", "users": {"root@pam": {"password": "..."}},
     "tokens": {"root@pam!pvestack": {"secret": "...", "privsep": 0}},
     "roles": {"PVEStackDeploy": ["VM.Allocate", ...]},
     "acl": [{"path": "/", "ugid": "deploy@pve", "privs": ["VM.Allocate", ...]},
             {"path": "/vms", "ugid": "pvestack@pve!deploy", "roles": ["PVEStackDeploy"]}]}

An ACL entry holds privileges directly (``privs``, the lab's shorthand) or roles
(``roles``, as ``pveum acl modify PATH --roles ROLE``). ``root@pam`` holds every
privilege. A token without privilege separation holds its user's
privileges, with separation the intersection of its own ACL and its user's. Identity is
separate from privileges: a token is ``user@realm!name`` and never ``root@pam``.
Tickets are signed (HMAC), so every process that reads the key can check them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvelab.backend.errors import PveError, permission_denied

TICKET_LIFETIME = 7200
ROOT = "root@pam"

# Every privilege root holds (PVE 8/9 list; enough for the paths the lab serves).
PRIVILEGES = (
    "Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate",
    "Datastore.Audit", "Group.Allocate", "Mapping.Audit", "Mapping.Modify", "Mapping.Use",
    "Permissions.Modify", "Pool.Allocate", "Pool.Audit", "Realm.Allocate",
    "Realm.AllocateUser", "SDN.Allocate", "SDN.Audit", "SDN.Use", "Sys.AccessNetwork",
    "Sys.Audit", "Sys.Console", "Sys.Incoming", "Sys.Modify", "Sys.PowerMgmt", "Sys.Syslog",
    "User.Modify", "VM.Allocate", "VM.Audit", "VM.Backup", "VM.Clone", "VM.Config.CDROM",
    "VM.Config.CPU", "VM.Config.Cloudinit", "VM.Config.Disk", "VM.Config.HWType",
    "VM.Config.Memory", "VM.Config.Network", "VM.Config.Options", "VM.Console", "VM.Migrate",
    "VM.PowerMgmt", "VM.Snapshot", "VM.Snapshot.Rollback", "VM.GuestAgent.Audit",
)  # fmt: skip


@dataclass(frozen=True)
class Identity:
    """Who sent a request: ``user`` (``root@pam``) and, for a token, ``tokenid``
    (``root@pam!pvestack``). ``authid`` is what PVE compares with ``'root@pam'``."""

    user: str
    token: str | None = None

    @property
    def authid(self) -> str:
        return f"{self.user}!{self.token}" if self.token else self.user

    @property
    def is_root(self) -> bool:
        return self.authid == ROOT


@dataclass(frozen=True)
class Ticket:
    ticket: str
    csrf: str
    username: str


class AuthStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    # -------------------------------------------------------------- storage

    def _load(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        changed = False
        if "key" not in data:
            data["key"] = secrets.token_hex(32)
            changed = True
        for name in ("users", "tokens"):
            if name not in data:
                data[name] = {}
                changed = True
        if ROOT not in data["users"]:
            data["users"][ROOT] = {"password": secrets.token_urlsafe(18)}
            changed = True
        data.setdefault("acl", [])
        data.setdefault("roles", {})
        if changed:
            self._save(data)
        return data

    def _save(self, data: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        tmp.replace(self.path)

    # -------------------------------------------------------------- setup (the lab's own)

    def set_password(self, user: str, password: str) -> None:
        data = self._load()
        data["users"].setdefault(user, {})["password"] = password
        self._save(data)

    def root_password(self) -> str:
        password: str = self._load()["users"][ROOT]["password"]
        return password

    def add_user(self, user: str, password: str | None = None) -> None:
        data = self._load()
        data["users"].setdefault(user, {})
        if password is not None:
            data["users"][user]["password"] = password
        self._save(data)

    def add_token(self, tokenid: str, secret: str | None = None, *, privsep: bool = False) -> str:
        """Create (or replace) ``user@realm!name``; return its secret."""
        user, bang, name = tokenid.partition("!")
        if not bang or not name or "@" not in user:
            raise ValueError(f"not a token id: {tokenid!r}")
        data = self._load()
        if user not in data["users"]:
            data["users"][user] = {}
        secret = secret or str(_uuid())
        data["tokens"][tokenid] = {"secret": secret, "privsep": int(privsep)}
        self._save(data)
        return secret

    def grant(self, ugid: str, path: str, privs: Iterable[str]) -> None:
        data = self._load()
        data["acl"].append({"path": path.rstrip("/") or "/", "ugid": ugid, "privs": sorted(privs)})
        self._save(data)

    def set_role(self, role: str, privs: Iterable[str]) -> None:
        """``pveum role add ROLE --privs ...`` (or ``role modify`` without ``--append``)."""
        unknown = sorted(set(privs) - set(PRIVILEGES))
        if unknown:
            raise ValueError(f"invalid privilege name(s): {', '.join(unknown)}")
        data = self._load()
        data["roles"][role] = sorted(set(privs))
        self._save(data)

    def role(self, role: str) -> tuple[str, ...]:
        return tuple(self._load()["roles"].get(role, ()))

    def acl_modify(self, path: str, ugid: str, roles: Iterable[str]) -> None:
        """``pveum acl modify PATH --roles R --users U`` (or ``--tokens``); propagating."""
        data = self._load()
        path = path.rstrip("/") or "/"
        data["acl"].append({"path": path, "ugid": ugid, "roles": sorted(roles)})
        self._save(data)

    def acl_delete(self, path: str, ugid: str) -> None:
        """``pveum acl delete PATH --users U``: every entry of ``ugid`` on exactly ``path``."""
        data = self._load()
        path = path.rstrip("/") or "/"
        data["acl"] = [e for e in data["acl"] if not (e["path"] == path and e["ugid"] == ugid)]
        self._save(data)

    # -------------------------------------------------------------- authentication

    def check_token(self, header: str) -> Identity:
        """``PVEAPIToken=user@realm!name=secret`` (also ``:`` before the secret)."""
        body = header[len("PVEAPIToken=") :].strip()
        sep = body.find("=", body.find("!"))
        if sep < 0:
            sep = body.find(":", body.find("!"))
        tokenid, secret = (body[:sep], body[sep + 1 :]) if sep > 0 else (body, "")
        tokens = self._load()["tokens"]
        entry = tokens.get(tokenid)
        if entry is None or not hmac.compare_digest(str(entry["secret"]), secret):
            raise PveError(401, "authentication failure")
        user, _, name = tokenid.partition("!")
        return Identity(user, name)

    def login(self, username: str, password: str) -> Ticket:
        if "@" not in username:
            username += "@pam"
        users = self._load()["users"]
        stored = users.get(username, {}).get("password")
        if stored is None or not hmac.compare_digest(str(stored), password):
            raise PveError(401, "authentication failure")
        return self.issue(username)

    def issue(self, user: str, now: float | None = None) -> Ticket:
        stamp = f"{int(now if now is not None else time.time()):08X}"
        plain = f"PVE:{user}:{stamp}"
        return Ticket(f"{plain}::{self._sign(plain)}", self._csrf(user, stamp), user)

    def _sign(self, text: str) -> str:
        key = bytes.fromhex(self._load()["key"])
        mac = hmac.new(key, text.encode(), hashlib.sha256).digest()
        return base64.b64encode(mac).decode()

    def _csrf(self, user: str, stamp: str) -> str:
        return f"{stamp}:{self._sign('csrf:' + user + ':' + stamp)}"

    def check_ticket(self, ticket: str, csrf: str | None, *, write: bool) -> Identity:
        plain, sep, sig = ticket.partition("::")
        parts = plain.split(":")
        valid = bool(sep) and len(parts) == 3 and parts[0] == "PVE"
        if valid:
            valid = hmac.compare_digest(self._sign(plain), sig)
        if valid:
            try:
                age = time.time() - int(parts[2], 16)
            except ValueError:
                age = TICKET_LIFETIME + 1
            valid = -300 < age < TICKET_LIFETIME
        if not valid:
            raise PveError(401, "permission denied - invalid PVE ticket")
        user, stamp = parts[1], parts[2]
        if write and not (csrf and hmac.compare_digest(csrf, self._csrf(user, stamp))):
            raise PveError(401, "Permission denied - invalid csrf token")
        return Identity(user)

    # -------------------------------------------------------------- privileges

    def privileges(self, who: Identity, path: str) -> set[str]:
        """The privileges ``who`` holds on ``path`` (ACLs propagate down the tree)."""
        data = self._load()
        if who.user == ROOT and (
            who.token is None or not data["tokens"].get(who.authid, {}).get("privsep")
        ):
            return set(PRIVILEGES)
        roles = data.get("roles", {})
        user_privs = self._acl_privs(data["acl"], roles, who.user, path)
        if who.token is None:
            return user_privs
        entry = data["tokens"].get(who.authid, {})
        if not entry.get("privsep"):
            return user_privs
        return user_privs & self._acl_privs(data["acl"], roles, who.authid, path)

    @staticmethod
    def _acl_privs(
        acl: Sequence[Mapping[str, Any]], roles: Mapping[str, Sequence[str]], ugid: str, path: str
    ) -> set[str]:
        held: set[str] = set()
        for entry in acl:
            p = entry["path"]
            if entry["ugid"] == ugid and (p in ("/", path) or path.startswith(p + "/")):
                held.update(entry.get("privs", ()))
                for role in entry.get("roles", ()):
                    held.update(roles.get(role, ()))
        return held

    def permissions(self, who: Identity, path: str | None = None) -> dict[str, dict[str, int]]:
        data = self._load()
        # pve-access-control's get_effective_permissions: the ACL tree's paths and these
        paths = {"/", "/access", "/access/groups", "/nodes", "/pool", "/sdn", "/storage", "/vms"}
        paths |= {e["path"] for e in data["acl"]}
        if path is not None:
            paths = {path}
        out = {}
        for p in sorted(paths):
            privs = self.privileges(who, p)
            if privs:
                out[p] = dict.fromkeys(sorted(privs), 1)
        return out

    def check(self, who: Identity, expr: Sequence[Any], params: Mapping[str, Any]) -> None:
        """Evaluate a schema ``permissions.check`` expression; PVE's 403 when it fails."""
        if not self._eval(who, expr, params, raise_=True):
            raise permission_denied()

    def _eval(
        self, who: Identity, expr: Sequence[Any], params: Mapping[str, Any], *, raise_: bool
    ) -> bool:
        op = expr[0]
        if op == "perm":
            path = str(expr[1])
            for key, val in params.items():
                path = path.replace("{" + key + "}", str(val))
            privs = list(expr[2])
            any_ = len(expr) > 4 and expr[3] == "any" and expr[4]
            held = self.privileges(who, path)
            if any_:
                if held.intersection(privs):
                    return True
                if raise_:
                    raise permission_denied(f"{path}, {'|'.join(privs)}")
                return False
            for priv in privs:
                if priv not in held:
                    if raise_:
                        raise permission_denied(f"{path}, {priv}")
                    return False
            return True
        if op == "and":
            return all(self._eval(who, e, params, raise_=raise_) for e in expr[1:])
        if op == "or":
            if any(self._eval(who, e, params, raise_=False) for e in expr[1:]):
                return True
            if raise_:
                raise permission_denied()
            return False
        if op == "userid-param":
            return True
        return True

    def require(self, who: Identity, path: str, *privs: str, any_: bool = False) -> None:
        self._eval(who, ["perm", path, list(privs), "any", int(any_)], {}, raise_=True)

    def allowed(self, who: Identity, path: str, priv: str) -> bool:
        return priv in self.privileges(who, path)


def _uuid() -> str:
    return str(uuid.uuid4())
