"""Every precondition kind, checked against the live node just before its action runs.

A check returns ``Precheck(run=True)`` (go), ``Precheck(run=False, detail)`` (already
done: skipped), or raises ``PreconditionError``/``OwnershipError`` (the world changed
since the plan: nothing is touched). API facts come through the client; host paths
through the root transport (a read-only ``capture``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pvestack._client import PveClient
from pvestack._commands import cmd
from pvestack._errors import (
    OwnershipError,
    PreconditionError,
    PveNotFoundError,
    PveParamError,
)
from pvestack._model import (
    Absent,
    Action,
    Adopt,
    HostDirState,
    Owned,
    Running,
    Stopped,
    TemplateAbsent,
    mark_owner,
)
from pvestack.executors._base import RootTransport

_REPLAN = "run plan again: the node changed since the plan was made"

# $1 the host path: "symlink <component>" | "absent" | "<type> <uid> <gid>"; read-only.
_HOST_PATH_STATE = r"""p=$1
cur=
IFS=/
for c in $p; do
  [ -n "$c" ] || continue
  cur="$cur/$c"
  if [ -L "$cur" ]; then echo "symlink $cur"; exit 0; fi
  if [ ! -e "$cur" ]; then echo absent; exit 0; fi
done
if [ -d "$p" ]; then t=directory; else t=other; fi
echo "$t $(stat -c '%u %g' -- "$p")"
"""


@dataclass(frozen=True)
class Precheck:
    """The outcome of a precondition: run it, or skip it because it is already done."""

    run: bool
    detail: str = ""


class PreconditionChecker:
    def __init__(self, client: PveClient, transport: RootTransport | None = None) -> None:
        self.client = client
        self.transport = transport

    def check(self, action: Action) -> Precheck:
        pre = action.precondition
        t = action.target
        if isinstance(pre, TemplateAbsent):
            return self._template_absent(t.node, pre)
        if isinstance(pre, Absent):
            return self._absent(t.node, pre)
        if isinstance(pre, HostDirState):
            return self._host_dir(pre)
        vmid = t.vmid if t.vmid is not None else 0
        if isinstance(pre, Owned | Stopped | Running):
            self._owned(t.node, vmid, pre.stack, adopt=False)
        elif isinstance(pre, Adopt):
            self._owned(t.node, vmid, pre.stack, adopt=True)
        if isinstance(pre, Stopped | Running):
            return self._power(t.node, vmid, want_running=isinstance(pre, Running))
        return Precheck(True)

    # ---------------------------------------------------------------- API facts

    def _template_absent(self, node: str, pre: TemplateAbsent) -> Precheck:
        if self._has_template(node, pre.storage, pre.volid):
            return Precheck(False, f"{pre.volid} is already there")
        return Precheck(True)

    def _has_template(self, node: str, storage: str, volid: str) -> bool:
        rows = self.client.get(f"/nodes/{node}/storage/{storage}/content", content="vztmpl")
        return any(isinstance(r, dict) and r.get("volid") == volid for r in rows or [])

    def _absent(self, node: str, pre: Absent) -> Precheck:
        try:
            self.client.get("/cluster/nextid", vmid=pre.vmid)
        except PveParamError as e:
            if self._owner(node, pre.vmid) == pre.stack:
                return Precheck(False, f"lxc/{pre.vmid} already created (resumed)")
            raise OwnershipError(
                f"vmid {pre.vmid} was taken since the plan was made ({e.pve_message}); "
                "not creating anything",
                hint="run plan again; pvestack never touches a guest it did not create",
            ) from None
        if pre.volid and not self._has_template(node, pre.storage, pre.volid):
            raise PreconditionError(
                f"the template {pre.volid} is no longer on {node}; not creating lxc/{pre.vmid}",
                hint=_REPLAN + " (it downloads the template again)",
            )
        return Precheck(True)

    def _owned(self, node: str, vmid: int, stack: str, *, adopt: bool) -> None:
        owner = self._owner(node, vmid)
        if owner == stack or (adopt and owner is None):
            return
        if adopt:
            what = f"now carries the mark of stack {owner!r}"
        elif owner is None:
            what = f"no longer carries the mark of stack {stack!r}"
        else:
            what = f"now carries the mark of stack {owner!r}, not {stack!r}"
        raise OwnershipError(
            f"lxc/{vmid} on {node} {what}; not touching it",
            hint="run plan again (or --adopt after checking the guest)",
        )

    def _power(self, node: str, vmid: int, *, want_running: bool) -> Precheck:
        st = self.client.get(f"/nodes/{node}/lxc/{vmid}/status/current")
        status = str(st.get("status", "?")) if isinstance(st, dict) else "?"
        if want_running and status != "running":
            raise PreconditionError(
                f"lxc/{vmid} on {node} is {status}, this step needs it running; not touching it",
                hint=_REPLAN,
            )
        if not want_running and status == "running":
            return Precheck(False, "already running")
        return Precheck(True)

    def _owner(self, node: str, vmid: int) -> str | None:
        try:
            cfg = self.client.get(f"/nodes/{node}/lxc/{vmid}/config")
        except PveNotFoundError:  # gone; any other error is reported as itself
            return None
        return mark_owner({str(k): str(v) for k, v in (cfg or {}).items()})

    # ---------------------------------------------------------------- host facts

    def _host_dir(self, pre: HostDirState) -> Precheck:
        if self.transport is None:
            raise PreconditionError(f"{pre.path}: cannot be checked without a root transport")
        out = self.transport.capture(cmd("sh", "-c", _HOST_PATH_STATE, "sh", pre.path))
        state = out.stdout.strip().split()
        if out.returncode != 0 or not state:
            raise PreconditionError(f"{pre.path}: cannot read its state: {out.stderr.strip()}")
        if state[0] == "symlink":
            raise PreconditionError(
                f"{pre.path}: {state[1]} is a symbolic link; pvestack never follows one "
                "in a host path (not touching it)",
                hint="point the mount at the real directory",
            )
        if state[0] == "other":
            raise PreconditionError(f"{pre.path} exists and is not a directory; not touching it")
        self._same_as_planned(pre, state)
        return Precheck(True)

    @staticmethod
    def _same_as_planned(pre: HostDirState, state: list[str]) -> None:
        if pre.exists is None:
            return
        exists = state[0] == "directory"
        if exists != pre.exists:
            now = "exists now" if exists else "is gone"
            raise PreconditionError(f"{pre.path} {now}; not touching it", hint=_REPLAN)
        if exists and (int(state[1]), int(state[2])) != (pre.uid, pre.gid):
            raise PreconditionError(
                f"{pre.path} is owned by {state[1]}:{state[2]} now, the plan saw "
                f"{pre.uid}:{pre.gid}; not touching it",
                hint=_REPLAN,
            )
