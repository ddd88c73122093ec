"""Request handlers: parameters (already validated against the schema) -> backend -> data.

Each handler gets a ``Request`` and returns what goes into ``{"data": ...}``; errors are
the backend's ``PveError``s, serialised by the server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pvelab.backend.auth import Identity
from pvelab.backend.errors import PveError
from pvelab.backend.node import Node


@dataclass(frozen=True)
class Request:
    node: Node
    who: Identity | None
    params: dict[str, Any]
    method: str
    template: str

    @property
    def user(self) -> Identity:
        if self.who is None:  # pragma: no cover - the server authenticates first
            raise PveError(401, "No ticket")
        return self.who

    @property
    def vmid(self) -> int:
        return int(self.params["vmid"])

    def opt(self, name: str, default: Any = None) -> Any:
        return self.params.get(name, default)

    def check_node(self) -> None:
        name = self.params.get("node")
        if name is not None and name != self.node.name:
            raise PveError(595, f"no such node '{name}'")


@dataclass(frozen=True)
class Answer:
    """Data plus top-level members beside it (``total`` of a task log)."""

    data: Any
    extra: dict[str, Any]


def _children(*names: str) -> list[dict[str, str]]:
    return [{"subdir": n} for n in names]


# ---------------------------------------------------------------- cluster, access


def version(r: Request) -> Any:
    return r.node.version()


def nodes(r: Request) -> Any:
    return r.node.nodes()


def node_index(r: Request) -> Any:
    r.check_node()
    return _children("lxc", "status", "storage", "tasks", "version")


def node_status(r: Request) -> Any:
    r.check_node()
    return r.node.node_status()


def cluster_resources(r: Request) -> Any:
    return r.node.cluster_resources(r.user, r.opt("type"))


def cluster_status(r: Request) -> Any:
    return r.node.cluster_status()


def nextid(r: Request) -> Any:
    vmid = r.opt("vmid")
    return r.node.nextid(int(vmid) if vmid is not None else None)


def permissions(r: Request) -> Any:
    who = r.user
    userid = r.opt("userid")
    if userid and userid != who.authid:
        owner = userid.partition("!")[0]
        if owner != who.user and not r.node.auth.allowed(who, "/access", "Sys.Audit"):
            raise PveError(403, "Permission check failed (/access, Sys.Audit)")
        name, _, token = userid.partition("!")
        who = Identity(name, token or None)
    return r.node.auth.permissions(who, r.opt("path"))


def ticket_form(r: Request) -> Any:
    return None


def ticket(r: Request) -> Any:
    username = str(r.params["username"])
    if "@" not in username and r.opt("realm"):
        username = f"{username}@{r.params['realm']}"
    t = r.node.auth.login(username, str(r.params["password"]))
    return {"ticket": t.ticket, "CSRFPreventionToken": t.csrf, "username": t.username, "cap": {}}


# ---------------------------------------------------------------- storage


def storage_list(r: Request) -> Any:
    r.check_node()
    return r.node.storage_list(r.user, r.opt("content"))


def storage_status(r: Request) -> Any:
    r.check_node()
    return r.node.storage_status(r.params["storage"])


def storage_content(r: Request) -> Any:
    r.check_node()
    vmid = r.opt("vmid")
    return r.node.storage_content(
        r.params["storage"], r.opt("content"), int(vmid) if vmid is not None else None
    )


def volume_delete(r: Request) -> Any:
    r.check_node()
    return r.node.delete_volume(r.user, r.params["storage"], r.params["volume"])


def download_url(r: Request) -> Any:
    r.check_node()
    return r.node.download_url(r.user, r.params["storage"], r.params)


# ---------------------------------------------------------------- containers


def lxc_list(r: Request) -> Any:
    r.check_node()
    return r.node.lxc_list(r.user)


def lxc_create(r: Request) -> Any:
    r.check_node()
    return r.node.create(r.params, user=r.user)


def lxc_index(r: Request) -> Any:
    r.check_node()
    r.node.load(r.vmid)
    return _children("config", "pending", "status", "snapshot")


def lxc_destroy(r: Request) -> Any:
    r.check_node()
    return r.node.destroy(
        r.vmid, user=r.user, force=bool(r.opt("force")), purge=bool(r.opt("purge"))
    )


def lxc_config_get(r: Request) -> Any:
    r.check_node()
    snap = r.opt("snapshot")
    return r.node.get_config(r.vmid, current=bool(r.opt("current")), snapshot=snap)


def _set(r: Request) -> None:
    params = {k: v for k, v in r.params.items()
              if k not in ("node", "vmid", "delete", "digest", "revert")}  # fmt: skip
    delete = [d for d in str(r.opt("delete", "")).replace(";", ",").split(",") if d.strip()]
    revert = [d for d in str(r.opt("revert", "")).split(",") if d.strip()]
    r.node.set_config(
        r.vmid, params, [d.strip() for d in delete], user=r.user, digest=r.opt("digest"),
        revert=revert,
    )  # fmt: skip


def lxc_config_put(r: Request) -> Any:
    r.check_node()
    _set(r)
    return None


def lxc_pending(r: Request) -> Any:
    r.check_node()
    return r.node.pending(r.vmid)


def lxc_status_index(r: Request) -> Any:
    r.check_node()
    r.node.load(r.vmid)
    return _children("current", "start", "stop", "shutdown", "reboot")


def lxc_interfaces(r: Request) -> Any:
    r.check_node()
    return r.node.interfaces(r.vmid)


def lxc_status_current(r: Request) -> Any:
    r.check_node()
    return r.node.status(r.vmid)


def _no_skiplock(r: Request) -> None:
    if r.opt("skiplock") and not r.user.is_root:
        raise PveError(400, "Parameter verification failed.",
                       {"skiplock": "Only root may use this option."})  # fmt: skip


def lxc_start(r: Request) -> Any:
    r.check_node()
    _no_skiplock(r)
    return r.node.start(r.vmid, user=r.user)


def lxc_stop(r: Request) -> Any:
    r.check_node()
    _no_skiplock(r)
    return r.node.stop(r.vmid, user=r.user)


def lxc_shutdown(r: Request) -> Any:
    r.check_node()
    return r.node.shutdown(
        r.vmid, user=r.user, timeout=int(r.opt("timeout", 60)), force=bool(r.opt("forceStop"))
    )


def lxc_reboot(r: Request) -> Any:
    r.check_node()
    return r.node.reboot(r.vmid, user=r.user, timeout=int(r.opt("timeout", 60)))


# ---------------------------------------------------------------- snapshots


def snapshot_list(r: Request) -> Any:
    r.check_node()
    return r.node.snapshot_list(r.vmid)


def snapshot_create(r: Request) -> Any:
    r.check_node()
    return r.node.snapshot(
        r.vmid, str(r.params["snapname"]), user=r.user, description=r.opt("description")
    )


def snapshot_index(r: Request) -> Any:
    r.check_node()
    return _children("config", "rollback")


def snapshot_delete(r: Request) -> Any:
    r.check_node()
    return r.node.delete_snapshot(r.vmid, str(r.params["snapname"]), user=r.user)


def snapshot_config(r: Request) -> Any:
    r.check_node()
    return r.node.get_config(r.vmid, snapshot=str(r.params["snapname"]))


def snapshot_rollback(r: Request) -> Any:
    r.check_node()
    return r.node.rollback(
        r.vmid, str(r.params["snapname"]), user=r.user, start=bool(r.opt("start"))
    )


# ---------------------------------------------------------------- tasks


def task_list(r: Request) -> Any:
    r.check_node()
    return r.node.task_list(r.user, r.params)


def task_index(r: Request) -> Any:
    r.check_node()
    r.node.task_status(r.user, str(r.params["upid"]))
    return _children("log", "status")


def task_status(r: Request) -> Any:
    r.check_node()
    return r.node.task_status(r.user, str(r.params["upid"]))


def task_log(r: Request) -> Any:
    r.check_node()
    lines, total = r.node.task_log(
        r.user, str(r.params["upid"]), int(r.opt("start", 0)), int(r.opt("limit", 50))
    )
    return Answer(lines, {"total": total})
