"""The node's worker tasks as PVE's ``fork_worker`` and pve-manager's ``Tasks.pm`` see them.

``Worker.start`` runs a body as a task (with the lab's injected faults: the next task of a
type can be made to fail), ``wait`` waits for one, and ``listing``/``status``/``log``
answer ``/nodes/{node}/tasks`` to whoever may see the task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pvelab.backend.auth import AuthStore, Identity
from pvelab.backend.errors import PveError, TaskFailed, param_error, permission_denied
from pvelab.backend.tasks import TaskLog, TaskStore, Upid

TaskBody = Callable[[TaskLog], None]


class Worker:
    """Tasks of node ``node`` in ``tasks``; ``auth`` decides who sees which."""

    def __init__(self, tasks: TaskStore, auth: AuthStore, node: str) -> None:
        self.tasks = tasks
        self.auth = auth
        self.node = node
        self._fail_next: dict[str, str] = {}

    def fail_next(self, ttype: str, message: str) -> None:
        """Make the next task of this type (``vzstart``...) end with ``TASK ERROR: message``."""
        self._fail_next[ttype] = message

    def reset_faults(self) -> None:
        self._fail_next.clear()

    def start(
        self,
        ttype: str,
        vmid: int | str,
        who: Identity,
        body: TaskBody,
        on_fault: Callable[[], None] | None = None,
    ) -> str:
        """Start ``body`` as a task; its UPID. ``on_fault`` is what the real body does when
        it fails (create: purge), run when an injected fault replaces the body."""
        fault = self._fail_next.pop(ttype, None)
        if fault is not None:

            def failing(log: TaskLog) -> None:
                if on_fault is not None:
                    on_fault()
                raise TaskFailed(fault)

            body = failing
        return self.tasks.start(ttype, str(vmid), who.authid, body)

    def wait(self, upid: str, timeout: float | None = None) -> None:
        """Wait for a task; raise ``PveError(500, exitstatus)`` if it failed (for ``pct``)."""
        status = self.tasks.wait(upid, timeout)
        if status != "OK" and not status.startswith("WARNINGS"):
            raise PveError(500, status)

    def listing(self, who: Identity, params: Mapping[str, Any]) -> list[dict[str, Any]]:
        """``GET /nodes/{node}/tasks`` with its filters, newest first."""
        out = []
        for t in self.tasks.all():
            if self._visible(who, t["user"]) and _selected(t, params):
                item = dict(t)
                if t["status"] == "stopped":
                    item["status"] = t["exitstatus"]
                out.append(item)
        start = int(params.get("start", 0))
        limit = int(params.get("limit", 50))
        return out[start : start + limit] if limit else out[start:]

    def status(self, who: Identity, upid: str) -> dict[str, Any]:
        u = Upid.parse(upid)
        if u.node != self.node or not self.tasks.exists(upid):
            raise param_error({"upid": "no such task"})
        self._check(who, upid)
        return self.tasks.status(upid)

    def log(
        self, who: Identity, upid: str, start: int = 0, limit: int = 50
    ) -> tuple[list[dict[str, Any]], int]:
        self._check(who, upid)
        return self.tasks.log(upid, start, limit)

    def _check(self, who: Identity, upid: str, priv: str = "Sys.Audit") -> Upid:
        """pve-manager's Tasks.pm: a bad UPID or an unknown task is a 400; someone else's
        task needs ``priv`` on the node."""
        u = Upid.parse(upid)
        if not self._visible(who, u.user, priv):
            raise permission_denied(f"/nodes/{self.node}, {priv}")
        return u

    def _visible(self, who: Identity, owner: str, priv: str = "Sys.Audit") -> bool:
        """A user sees its tasks and its tokens'; a token its own; others need ``priv`` on
        the node."""
        if owner == who.authid or (who.token is None and owner.partition("!")[0] == who.user):
            return True
        return self.auth.allowed(who, f"/nodes/{self.node}", priv)


def _selected(t: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    """The task list's filters (``vmid``, ``typefilter``, ``userfilter``, ``errors``,
    ``source``, ``since``, ``until``)."""
    vmid = params.get("vmid")
    source = params.get("source", "archive")
    since, until = params.get("since"), params.get("until")
    return not (
        (vmid is not None and t["id"] != str(vmid))
        or (params.get("typefilter") and t["type"] != params["typefilter"])
        or (params.get("userfilter") and params["userfilter"] not in t["user"])
        or (params.get("errors") and t.get("exitstatus", "OK") == "OK")
        or (source == "active" and t["status"] != "running")
        or (source == "archive" and t["status"] == "running")
        or (since is not None and t["starttime"] < int(since))
        or (until is not None and t["starttime"] > int(until))
    )
