"""Routes: (method, schema path template) -> handler. Paths are matched against every
template of the API schema, so a method the lab does not implement answers PVE's 501."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pvelab.api import handlers as h
from pvelab.backend.schema import api_schema

Handler = Callable[[h.Request], Any]

ROUTES: Mapping[tuple[str, str], Handler] = {
    ("GET", "/version"): h.version,
    ("GET", "/nodes"): h.nodes,
    ("GET", "/nodes/{node}"): h.node_index,
    ("GET", "/nodes/{node}/status"): h.node_status,
    ("GET", "/cluster/resources"): h.cluster_resources,
    ("GET", "/cluster/nextid"): h.nextid,
    ("GET", "/cluster/status"): h.cluster_status,
    ("GET", "/access/permissions"): h.permissions,
    ("GET", "/access/ticket"): h.ticket_form,
    ("POST", "/access/ticket"): h.ticket,
    ("GET", "/nodes/{node}/storage"): h.storage_list,
    ("GET", "/nodes/{node}/storage/{storage}/status"): h.storage_status,
    ("GET", "/nodes/{node}/storage/{storage}/content"): h.storage_content,
    ("DELETE", "/nodes/{node}/storage/{storage}/content/{volume}"): h.volume_delete,
    ("POST", "/nodes/{node}/storage/{storage}/download-url"): h.download_url,
    ("GET", "/nodes/{node}/lxc"): h.lxc_list,
    ("POST", "/nodes/{node}/lxc"): h.lxc_create,
    ("GET", "/nodes/{node}/lxc/{vmid}"): h.lxc_index,
    ("DELETE", "/nodes/{node}/lxc/{vmid}"): h.lxc_destroy,
    ("GET", "/nodes/{node}/lxc/{vmid}/config"): h.lxc_config_get,
    ("PUT", "/nodes/{node}/lxc/{vmid}/config"): h.lxc_config_put,
    ("GET", "/nodes/{node}/lxc/{vmid}/pending"): h.lxc_pending,
    ("GET", "/nodes/{node}/lxc/{vmid}/interfaces"): h.lxc_interfaces,
    ("GET", "/nodes/{node}/lxc/{vmid}/status"): h.lxc_status_index,
    ("GET", "/nodes/{node}/lxc/{vmid}/status/current"): h.lxc_status_current,
    ("POST", "/nodes/{node}/lxc/{vmid}/status/start"): h.lxc_start,
    ("POST", "/nodes/{node}/lxc/{vmid}/status/stop"): h.lxc_stop,
    ("POST", "/nodes/{node}/lxc/{vmid}/status/shutdown"): h.lxc_shutdown,
    ("POST", "/nodes/{node}/lxc/{vmid}/status/reboot"): h.lxc_reboot,
    ("GET", "/nodes/{node}/lxc/{vmid}/snapshot"): h.snapshot_list,
    ("POST", "/nodes/{node}/lxc/{vmid}/snapshot"): h.snapshot_create,
    ("GET", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}"): h.snapshot_index,
    ("DELETE", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}"): h.snapshot_delete,
    ("GET", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/config"): h.snapshot_config,
    ("POST", "/nodes/{node}/lxc/{vmid}/snapshot/{snapname}/rollback"): h.snapshot_rollback,
    ("GET", "/nodes/{node}/tasks"): h.task_list,
    ("GET", "/nodes/{node}/tasks/{upid}"): h.task_index,
    ("GET", "/nodes/{node}/tasks/{upid}/status"): h.task_status,
    ("GET", "/nodes/{node}/tasks/{upid}/log"): h.task_log,
}


@dataclass(frozen=True)
class Match:
    template: str
    params: dict[str, str]


@functools.cache
def _compiled() -> list[tuple[re.Pattern[str], str]]:
    out = []
    for template in api_schema():
        rx = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))
        out.append((re.compile(f"^{rx}$"), template))
    # Literal segments win over placeholders (``/status/current`` before ``/{snapname}``).
    out.sort(key=lambda p: (p[1].count("{"), -len(p[1])))
    return out


def resolve(path: str) -> Match | None:
    """The schema template matching ``path`` (without ``/api2/json``) and its parameters."""
    path = path.rstrip("/") or "/"
    for rx, template in _compiled():
        m = rx.match(path)
        if m:
            return Match(template, {k: v for k, v in m.groupdict().items()})
    return None
