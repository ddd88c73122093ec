"""The token's executor: runs ``api`` actions through the client, after re-checking
each action's precondition against the live node (the plan may be stale)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pvestack._client import PveClient
from pvestack._errors import OwnershipError, PveNotFoundError, PveParamError
from pvestack._model import Action, Actor
from pvestack._observe import mark_owner


@dataclass(frozen=True)
class Precheck:
    """The outcome of a precondition: run it, or skip it because it is already done."""

    run: bool
    detail: str = ""


class ApiExecutor:
    def __init__(self, client: PveClient, *, task_timeout: float = 900.0) -> None:
        self.client = client
        self.task_timeout = task_timeout

    # ---------------------------------------------------------------- preconditions

    def check(self, action: Action, node: str, vmid: int) -> Precheck:
        """Re-read what the action depends on, right before running it.

        Raises ``OwnershipError`` when the guest is no longer ours (or is taken).
        """
        kind, _, arg = action.precondition.partition(":")
        if kind == "template-missing":
            storage, _, volid = arg.partition(":")
            rows = self.client.get(f"/nodes/{node}/storage/{storage}/content", content="vztmpl")
            if any(isinstance(r, dict) and r.get("volid") == volid for r in rows or []):
                return Precheck(False, f"{volid} is already there")
            return Precheck(True)
        if kind == "vmid-free":
            try:
                self.client.get("/cluster/nextid", vmid=int(arg))
            except PveParamError as e:
                owner = self._owner(node, int(arg))
                if owner == action.stack:
                    return Precheck(False, f"lxc/{arg} already created (resumed)")
                raise OwnershipError(
                    f"vmid {arg} was taken since the plan was made ({e.pve_message})",
                    hint="run plan again; pvestack never touches a guest it did not create",
                ) from None
            return Precheck(True)
        if kind in ("owned", "adopt", "stopped"):
            owner = self._owner(node, vmid)
            if kind in ("owned", "stopped") and owner != arg:
                raise OwnershipError(
                    f"lxc/{vmid} on {node} no longer carries the mark of stack {arg!r} "
                    f"(mark: {owner!r}); not touching it",
                    hint="run plan again (or --adopt after checking the guest)",
                )
            if kind == "stopped":
                st = self.client.get(f"/nodes/{node}/lxc/{vmid}/status/current")
                if isinstance(st, dict) and st.get("status") == "running":
                    return Precheck(False, "already running")
            return Precheck(True)
        return Precheck(True)

    def _owner(self, node: str, vmid: int) -> str | None:
        try:
            cfg = self.client.get(f"/nodes/{node}/lxc/{vmid}/config")
        except PveNotFoundError:  # gone; any other error is reported as itself
            return None
        return mark_owner({str(k): str(v) for k, v in (cfg or {}).items()})

    # ---------------------------------------------------------------- run

    def run(self, action: Action, *, on_progress: Callable[[str], None] | None = None) -> None:
        if action.actor is not Actor.API:
            raise ValueError(f"{action.id} is a {action.actor.value} action, not an api one")
        for call in action.api:
            self.client.run(call, timeout=self.task_timeout, on_progress=on_progress)
