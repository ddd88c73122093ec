"""The node's storage API: ``GET /nodes/{node}/storage[/{sid}/status|content]``, volume
removal, ``download-url`` and ``POST aplinfo`` (a template into a storage), with PVE's
privileges; the directories themselves are ``storage.Storages``."""

from __future__ import annotations

import ipaddress
import os
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

from pvelab.backend import vzdump
from pvelab.backend.aplinfo import AplInfo
from pvelab.backend.auth import Identity
from pvelab.backend.errors import PveError, param_error
from pvelab.backend.guests import Guests
from pvelab.backend.schema import split_list
from pvelab.backend.storage import STORAGES, TEMPLATE_EXT, StorageDef
from pvelab.backend.tasks import TaskLog

_SEE_STORAGE = frozenset({"Datastore.Audit", "Datastore.AllocateSpace"})


def visible_storages(guests: Guests, who: Identity) -> list[StorageDef]:
    """pve-storage lists a storage to who has Datastore.Audit or .AllocateSpace on it."""
    return [s for s in STORAGES if guests.auth.privileges(who, f"/storage/{s.id}") & _SEE_STORAGE]


def storage_list(guests: Guests, who: Identity, content: str | None) -> list[dict[str, Any]]:
    wanted = set(split_list(content)) if content else None
    return [
        storage_status(guests, s.id)
        for s in visible_storages(guests, who)
        if wanted is None or wanted & set(s.content)
    ]


def storage_status(guests: Guests, sid: str) -> dict[str, Any]:
    s = guests.storages.get(sid)
    fs = os.statvfs(guests.lab_dir)
    total, avail = fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize
    return {
        "storage": sid, "type": s.type, "content": ",".join(s.content), "active": 1,
        "enabled": 1, "shared": 0, "total": total, "avail": avail, "used": total - avail,
        "used_fraction": (total - avail) / total if total else 0,
    }  # fmt: skip


def storage_content(
    guests: Guests, sid: str, content: str | None, vmid: int | None, who: Identity
) -> list[dict[str, Any]]:
    items = guests.storages.content(sid, content, vmid)
    return vzdump.visible_backups(guests, who, sid, items)


def delete_volume(guests: Guests, who: Identity, sid: str, volume: str) -> str:
    volid = volume if ":" in volume else f"{sid}:{volume}"
    guests.auth.require(who, f"/storage/{sid}", "Datastore.Allocate")
    path = guests.storages.volume_path(volid)
    if not path.exists():
        raise PveError(500, f"volume '{volid}' does not exist")
    m = re.match(r"^vm-(\d+)-disk-\d+$", volid.partition(":")[2])
    if m and guests.store.path(int(m.group(1))).exists():
        raise PveError(500, f"unable to delete volume '{volid}', it's used by CT {m.group(1)}")

    def body(log: TaskLog) -> None:
        guests.storages.free(volid)
        log.write(f"Removed volume '{volid}'")

    return guests.worker.start("imgdel", "", who, body)


def download_url(guests: Guests, who: Identity, sid: str, params: Mapping[str, Any]) -> str:
    filename = str(params["filename"])
    if params["content"] == "vztmpl" and not TEMPLATE_EXT.search(filename):
        raise param_error({"filename": "wrong file extension"})
    if "/" in filename or filename.startswith("."):
        raise param_error({"filename": "invalid filename"})
    store = guests.storages.get(sid)
    if params["content"] not in store.content:
        raise PveError(
            500, f"storage '{sid}' is not configured for content-type '{params['content']}'"
        )
    checksum = None
    if params.get("checksum"):
        checksum = (str(params["checksum-algorithm"]), str(params["checksum"]))
    url = str(params["url"])
    host = urllib.parse.urlsplit(url).hostname or ""
    if not _is_loopback(host):
        raise PveError(500, f"lab: download-url only fetches from loopback, not '{host}'")

    def body(log: TaskLog) -> None:
        guests.storages.download(sid, filename, url, checksum, log.write)

    return guests.worker.start("download", filename, who, body)


def apl_download(guests: Guests, aplinfo: AplInfo, who: Identity, sid: str, template: str) -> str:
    """``POST aplinfo``: the record's file into ``sid`` as a ``download`` task; the
    node verifies the index's sha512sum (APLInfo's hash_required)."""
    store = guests.storages.get(sid)
    record = aplinfo.lookup(template, store.content, sid)
    url = str(record["location"])
    if not _is_loopback(urllib.parse.urlsplit(url).hostname or ""):
        raise PveError(500, f"lab: aplinfo only fetches from loopback, not '{url}'")
    sha512 = str(record.get("sha512sum") or "")

    def body(log: TaskLog) -> None:
        if not sha512:
            raise PveError(500, "sha512sum missing for appliance (hash required)")
        guests.storages.download(sid, template, url, ("sha512", sha512), log.write)

    return guests.worker.start("download", template, who, body)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
