"""Start, stop, shutdown, reboot and destroy a container, as pve-container's status and
destroy API calls: checks before the task, the work (and PVE's wording) inside it."""

from __future__ import annotations

from pvelab.backend.auth import Identity
from pvelab.backend.errors import PveError
from pvelab.backend.guests import Guests
from pvelab.backend.schema import is_true
from pvelab.backend.tasks import TaskLog


def _need_running(guests: Guests, vmid: int, running: bool, kind: str = "CT") -> None:
    guests.load(vmid)  # the config must exist
    if guests.is_running(vmid) != running:
        state = "already running" if not running else "not running"
        raise PveError(500, f"{kind} {vmid} {state}")


def start(guests: Guests, vmid: int, who: Identity) -> str:
    _need_running(guests, vmid, False)

    def body(log: TaskLog) -> None:
        guests.store.check_lock(vmid, ("mounted",))
        guests.start_now(vmid, log)

    return guests.worker.start("vzstart", vmid, who, body)


def stop(guests: Guests, vmid: int, who: Identity) -> str:
    _need_running(guests, vmid, True)

    def body(log: TaskLog) -> None:
        guests.runtime.stop(vmid)

    return guests.worker.start("vzstop", vmid, who, body)


def shutdown(guests: Guests, vmid: int, who: Identity, timeout: int, force: bool) -> str:
    _need_running(guests, vmid, True)

    def body(log: TaskLog) -> None:
        guests.store.check_lock(vmid)
        guests.runtime.shutdown(vmid, timeout)
        if guests.is_running(vmid):
            if not force:
                raise PveError(500, "container did not stop")
            guests.runtime.stop(vmid)

    return guests.worker.start("vzshutdown", vmid, who, body)


def reboot(guests: Guests, vmid: int, who: Identity, timeout: int) -> str:
    _need_running(guests, vmid, True, kind="VM")  # PVE's wording for lxc reboot

    def body(log: TaskLog) -> None:
        guests.runtime.shutdown(vmid, timeout)
        if guests.is_running(vmid):
            guests.runtime.stop(vmid)
        guests.start_now(vmid, log)

    return guests.worker.start("vzreboot", vmid, who, body)


def destroy(guests: Guests, vmid: int, who: Identity, force: bool) -> str:
    opts = guests.load(vmid).main.options
    if is_true(opts.get("protection")):
        raise PveError(500, f"can't remove CT {vmid} - protection mode enabled")
    if opts.get("lock"):
        raise PveError(500, f"CT is locked ({opts['lock']})")
    msg = f"unable to destroy CT {vmid} - container is running"
    if guests.is_running(vmid) and not force:
        raise PveError(500, msg)

    def body(log: TaskLog) -> None:
        if guests.is_running(vmid):
            if not force:
                raise PveError(500, msg)
            log.write(f"forced to stop CT {vmid} before destroying!")
            guests.runtime.stop(vmid)
        guests.store.update_main(vmid, lock="destroyed")
        guests.purge(vmid)

    return guests.worker.start("vzdestroy", vmid, who, body)
