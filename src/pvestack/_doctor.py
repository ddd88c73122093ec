"""``pvestack doctor``: read-only checks before anything is touched.

``doctor(api, desired, root)`` asks the node (GETs only) and returns a frozen
``DoctorReport``: one ``Finding`` per check, ``pass``/``warn``/``fail`` with the
evidence and the fix. The checks: the API answers and its certificate matches the pin;
the token is accepted; every privilege the stacks need (``required_privileges``, from
PVE's checks for each call pvestack makes) is held, read from ``GET /access/permissions``,
with the ``pveum`` commands that grant what is missing; the node, its storages and their
content types, the bridge; the template present or obtainable; the vmid free or ours;
``lxc-pve`` vs the runc 1.3.3 breakage; the root transport (SSH with a known host key,
or the console). ``render_doctor`` prints one line per finding.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import paramiko

from pvestack._appliances import resolve_appliance
from pvestack._errors import PveAuthError, PveError, PvestackError, TransportError
from pvestack._model import DesiredState, StackSpec, mark_owner
from pvestack._nodepkgs import node_versions, runc_breakage_warning

ROLE = "PVEStackDeploy"


class Status(StrEnum):
    PASS = "pass"  # noqa: S105 (a status, not a password)
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    evidence: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorReport:
    findings: tuple[Finding, ...]

    @property
    def failed(self) -> bool:
        return any(f.status is Status.FAIL for f in self.findings)

    def by_check(self, prefix: str) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.check.startswith(prefix))


@dataclass(frozen=True)
class RootSettings:
    """How root steps reach the node (``[root]`` of the stack file)."""

    via: str  # ssh | console | none
    ssh_host: str | None = None
    ssh_port: int = 22
    known_hosts: str | None = None


class DoctorApi(Protocol):
    """What doctor needs of ``PveClient`` (GETs only)."""

    def get(self, path: str, **params: str | int) -> Any: ...

    def request(
        self, method: str, path: str, params: Mapping[str, str | int] | None = None
    ) -> Any: ...


@dataclass(frozen=True)
class Need:
    """Privileges needed on ``path``; ``alternative`` is another (path, privileges) that
    satisfies the same rule (download-url: Sys.AccessNetwork on the node, or Sys.Audit +
    Sys.Modify on /)."""

    path: str
    privs: tuple[str, ...]
    why: str
    alternative: tuple[str, tuple[str, ...]] | None = None


VM_PRIVS = (
    "VM.Allocate", "VM.Audit", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Disk",
    "VM.Config.Network", "VM.Config.Options", "VM.PowerMgmt", "VM.Snapshot", "VM.Backup",
)  # fmt: skip


def _storage_of(value: object) -> str | None:
    m = re.match(r"^([A-Za-z][A-Za-z0-9\-_.]*[A-Za-z0-9]):", str(value))
    return m.group(1) if m else None


def _net(value: object) -> dict[str, str]:
    return dict(p.split("=", 1) for p in str(value).split(",") if "=" in p)


def rootdir_storages(stack: StackSpec) -> tuple[str, ...]:
    ct = stack.container
    values = [ct.api_config.get("rootfs", "")] + [v.pve_value for v in ct.volume_mounts]
    return tuple(sorted({s for v in values if (s := _storage_of(v))}))


def bridges(stack: StackSpec) -> tuple[tuple[str, str | None], ...]:
    out = []
    for key, value in sorted(stack.container.api_config.items()):
        if re.fullmatch(r"net\d+", key):
            net = _net(value)
            if net.get("bridge"):
                out.append((net["bridge"], net.get("tag")))
    return tuple(out)


def required_privileges(desired: DesiredState) -> tuple[Need, ...]:
    """What the token needs, path by path (sources: pvelab.backend.privileges)."""
    needs: dict[tuple[str, str], Need] = {}

    def add(need: Need) -> None:
        needs.setdefault((need.path, ",".join(need.privs)), need)

    for s in desired.stacks:
        ct = s.container
        vm = f"/vms/{ct.vmid}" if ct.vmid is not None else "/vms"
        add(Need(vm, VM_PRIVS, "create, configure, start/stop, snapshot and read the CT"))
        t = ct.template.storage
        add(Need(f"/storage/{t}", ("Datastore.AllocateTemplate", "Datastore.Audit"),
                 "download and list the OS template"))  # fmt: skip
        if not ct.template.appliance:  # POST aplinfo needs only the storage's privilege
            add(Need(f"/nodes/{ct.node}", ("Sys.AccessNetwork",), "download-url",
                     alternative=("/", ("Sys.Audit", "Sys.Modify"))))  # fmt: skip
        add(Need(f"/nodes/{ct.node}", ("Sys.Audit",), "read the node's package versions"))
        for sid in rootdir_storages(s):
            add(Need(f"/storage/{sid}", ("Datastore.AllocateSpace",), "allocate the CT's volumes"))
        for bridge, tag in bridges(s):
            path = f"/sdn/zones/localnetwork/{bridge}" + (f"/{tag}" if tag else "")
            add(Need(path, ("SDN.Use",), f"attach the CT to {bridge}"))
    return tuple(needs.values())


def acl_path(path: str) -> str:
    """Where a careful user grants the role: the guests' subtree, else the path itself."""
    return "/vms" if path.startswith("/vms/") else path


def grant_commands(token_id: str, path: str, privs: Iterable[str]) -> str:
    user = token_id.partition("!")[0]
    privs_text = ",".join(privs)
    where = acl_path(path)
    return (
        f"pveum role modify {ROLE} --append 1 --privs {privs_text} "
        f"(or, without the role yet: pveum role add {ROLE} --privs {privs_text}); "
        f"pveum acl modify {where} --roles {ROLE} --users {user}; "
        f"pveum acl modify {where} --roles {ROLE} --tokens '{token_id}'"
    )


def doctor(
    api: DoctorApi,
    desired: DesiredState,
    root: RootSettings,
    *,
    token_id: str,
    connect: Callable[[str, int], None] | None = None,
    adopt: bool = False,
) -> DoctorReport:
    """``adopt``: a container of another owner in a stack's vmid is to be adopted
    (``apply --adopt``), a warning instead of a fail."""
    out: list[Finding] = []
    if not _api_checks(api, token_id, out):
        return DoctorReport(tuple(out))
    out += _privilege_checks(api, desired, token_id)
    out += _node_checks(api, desired)
    out += _stack_checks(api, desired, adopt)
    out += _runc_check(api, desired)
    out.append(_root_check(root, connect or _tcp_connect))
    return DoctorReport(tuple(out))


def _api_checks(api: DoctorApi, token_id: str, out: list[Finding]) -> bool:
    try:
        v = api.get("/version")
    except PveAuthError as e:
        out.append(Finding("api", Status.PASS, "the API answers over verified TLS"))
        out.append(Finding("token", Status.FAIL, f"{token_id} refused: {e.pve_message}",
                           "check the token id and secret (pveum user token list)"))  # fmt: skip
        return False
    except TransportError as e:
        out.append(Finding("api", Status.FAIL, str(e),
                           "check the URL, and that the fingerprint pinned is the node's "
                           "(pvenode cert info --output-format json)"))  # fmt: skip
        return False
    except PveError as e:
        out.append(Finding("api", Status.FAIL, str(e), "check the API URL"))
        return False
    release = v.get("version", "?") if isinstance(v, dict) else "?"
    out.append(Finding("api", Status.PASS, f"PVE {release} answers; TLS verified"))
    out.append(Finding("token", Status.PASS, f"{token_id} accepted"))
    return True


def _held(api: DoctorApi, path: str, cache: dict[str, frozenset[str]]) -> frozenset[str]:
    if path not in cache:
        perms = api.request("GET", "/access/permissions", {"path": path})
        held = perms.get(path, {}) if isinstance(perms, dict) else {}
        cache[path] = frozenset(held)
    return cache[path]


def _privilege_checks(api: DoctorApi, desired: DesiredState, token_id: str) -> list[Finding]:
    out = []
    cache: dict[str, frozenset[str]] = {}
    try:
        _held(api, "/", cache)
    except PveError as e:  # not a missing privilege: the node does not say
        return [Finding("privileges", Status.WARN, f"GET /access/permissions failed: {e}",
                        "check the privileges by hand (pveum user token permissions)")]  # fmt: skip
    for need in required_privileges(desired):
        check = f"privilege {need.path}"
        try:
            missing = [p for p in need.privs if p not in _held(api, need.path, cache)]
            if missing and need.alternative is not None:
                alt_path, alt_privs = need.alternative
                if all(p in _held(api, alt_path, cache) for p in alt_privs):
                    missing = []
        except PveError as e:
            out.append(Finding(check, Status.WARN, f"permissions unreadable: {e}"))
            continue
        if missing:
            out.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"{token_id} lacks {', '.join(missing)} on {need.path} ({need.why})",
                    grant_commands(token_id, need.path, missing),
                )
            )
        else:
            out.append(Finding(check, Status.PASS, f"{', '.join(need.privs)} ({need.why})"))
    return out


def _node_checks(api: DoctorApi, desired: DesiredState) -> list[Finding]:
    out = []
    nodes = {str(n.get("node")): n for n in _rows(api, "/nodes")}
    for node in sorted({s.container.node for s in desired.stacks}):
        n = nodes.get(node)
        if n is None or n.get("status", "online") != "online":
            out.append(Finding(f"node {node}", Status.FAIL, f"not an online node: {sorted(nodes)}",
                               "set container.node to one of the cluster's nodes"))  # fmt: skip
            continue
        out.append(Finding(f"node {node}", Status.PASS, "online"))
        stores = {str(r.get("storage")): r for r in _rows(api, f"/nodes/{node}/storage")}
        want: dict[str, set[str]] = {}
        for s in desired.stacks:
            if s.container.node == node:
                want.setdefault(s.container.template.storage, set()).add("vztmpl")
                for sid in rootdir_storages(s):
                    want.setdefault(sid, set()).add("rootdir")
        for sid, content in sorted(want.items()):
            out.append(_storage_finding(node, sid, content, stores.get(sid)))
        ifaces = {str(r.get("iface")) for r in _rows(api, f"/nodes/{node}/network")}
        for s in desired.stacks:
            for bridge, _tag in bridges(s):
                ok = bridge in ifaces
                fix = "" if ok else "create the bridge or change network.bridge"
                out.append(Finding(f"bridge {bridge}", Status.PASS if ok else Status.FAIL,
                                   f"on {node}" if ok else f"not on {node} ({sorted(ifaces)})",
                                   fix))  # fmt: skip
    return out


def _storage_finding(
    node: str, sid: str, content: set[str], row: Mapping[str, Any] | None
) -> Finding:
    if row is None:
        return Finding(f"storage {sid}", Status.FAIL, f"not visible on {node}",
                       "check the storage id (pvesm status) and Datastore.Audit on it")  # fmt: skip
    have = set(str(row.get("content", "")).split(","))
    lacking = sorted(content - have)
    if lacking:
        return Finding(f"storage {sid}", Status.FAIL, f"content {row.get('content')}",
                       f"pvesm set {sid} --content {','.join(sorted(have | content))}")  # fmt: skip
    return Finding(f"storage {sid}", Status.PASS, f"content {row.get('content')}")


def _stack_checks(api: DoctorApi, desired: DesiredState, adopt: bool = False) -> list[Finding]:
    out = []
    guests = {int(r["vmid"]): r for r in _rows(api, "/cluster/resources", type="vm")
              if "vmid" in r}  # fmt: skip
    for s in desired.stacks:
        ct = s.container
        t = ct.template
        if t.appliance:
            try:
                t = resolve_appliance(api.get(f"/nodes/{ct.node}/aplinfo"), t)
            except PvestackError as e:
                out.append(Finding(f"{s.name}: template", Status.FAIL, str(e), e.hint or ""))
                out.append(_vmid_finding(api, s, guests, adopt))
                continue
        rows = _rows(api, f"/nodes/{ct.node}/storage/{t.storage}/content", content="vztmpl")
        vols = {str(r.get("volid")) for r in rows}
        if t.volid in vols:
            out.append(Finding(f"{s.name}: template", Status.PASS, f"{t.volid} present"))
        elif t.checksum:
            out.append(Finding(f"{s.name}: template", Status.PASS,
                               f"{t.volid} will be downloaded from {t.url} ({t.checksum_algorithm} "
                               "verified by the node)"))  # fmt: skip
        else:
            out.append(Finding(f"{s.name}: template", Status.WARN,
                               f"{t.url} has no checksum: the download is not verified",
                               "add checksum + checksum_algorithm to [stack.template], or name "
                               "an appliance from the node's index (pveam available)"))  # fmt: skip
        out.append(_vmid_finding(api, s, guests, adopt))
    return out


def _vmid_finding(
    api: DoctorApi, s: StackSpec, guests: Mapping[int, Any], adopt: bool = False
) -> Finding:
    vmid = s.container.vmid
    check = f"{s.name}: vmid"
    if vmid is None:
        return Finding(check, Status.PASS, "the next free id")
    g = guests.get(vmid)
    if g is None:
        return Finding(check, Status.PASS, f"{vmid} is free")
    if g.get("type") == "lxc":
        try:
            cfg = api.get(f"/nodes/{g.get('node')}/lxc/{vmid}/config")
        except PveError:
            cfg = None
        conf = {str(k): str(v) for k, v in cfg.items()} if isinstance(cfg, Mapping) else {}
        owner = mark_owner(conf)
        if conf.get("lock"):  # busy (a create pvestack lost track of, or a task): not foreign
            return Finding(check, Status.WARN, f"{vmid} is locked ({conf['lock']}): apply "
                           "waits for its task, and says what to run if none runs")  # fmt: skip
        if owner == s.name:
            return Finding(check, Status.PASS, f"{vmid} is this stack's container")
        name = g.get("name", "")
        if owner is not None:  # another stack's: never taken over, not even with --adopt
            return Finding(check, Status.FAIL, f"{vmid} is lxc {name} of stack {owner!r}",
                           "choose another vmid")  # fmt: skip
        if adopt:
            return Finding(check, Status.WARN, f"{vmid} is lxc {name}, not "
                           "marked as this stack's: --adopt takes it over")  # fmt: skip
        return Finding(check, Status.FAIL, f"{vmid} is lxc {name} without the pvestack mark: "
                       "nothing is changed without --adopt",
                       f"check lxc/{vmid} is the container this stack means, then apply --adopt "
                       "(the plan shows the diff and the mark it adds first); else choose "
                       "another vmid")  # fmt: skip
    return Finding(check, Status.FAIL, f"{vmid} is taken by {g.get('type')} {g.get('name', '')}",
                   "choose another vmid (or --adopt a container you own)")  # fmt: skip


def _runc_check(api: DoctorApi, desired: DesiredState) -> list[Finding]:
    out = []
    for node in sorted({s.container.node for s in desired.stacks}):
        try:
            versions = node_versions(api, node)
        except PveError as e:
            out.append(Finding(f"lxc-pve on {node}", Status.WARN, f"versions unreadable: {e}",
                               "grant Sys.Audit on /nodes/" + node))  # fmt: skip
            continue
        warning = runc_breakage_warning(versions)
        lxc = versions.get("lxc-pve", "not installed")
        if warning:
            out.append(Finding(f"lxc-pve on {node}", Status.WARN, warning,
                               "apt update && apt full-upgrade on the node"))  # fmt: skip
        else:
            out.append(Finding(f"lxc-pve on {node}", Status.PASS, f"lxc-pve {lxc}"))
    return out


def _root_check(root: RootSettings, connect: Callable[[str, int], None]) -> Finding:
    if root.via == "console":
        return Finding("root", Status.PASS, "console mode: root steps are a script you run")
    if root.via == "none":
        return Finding("root", Status.WARN, 'root.via = "none": root steps are left to you',
                       'set root.via = "ssh" or "console"')  # fmt: skip
    host, port = root.ssh_host, root.ssh_port
    if not host:
        return Finding("root", Status.FAIL, "root.via = ssh without root.ssh.host",
                       "set root.ssh.host (PVESTACK_SSH_HOST)")  # fmt: skip
    known = _known_host(root.known_hosts, host, port)
    if not known:
        return Finding("root", Status.FAIL, f"no known host key for {host}:{port} in "
                       f"{root.known_hosts}", f"ssh-keyscan -p {port} {host} >> known_hosts, "
                       "after checking the key on the node's console")  # fmt: skip
    try:
        connect(host, port)
    except OSError as e:
        return Finding("root", Status.FAIL, f"ssh {host}:{port} unreachable: {e}",
                       "start sshd on the node or use root.via = console")  # fmt: skip
    return Finding("root", Status.PASS, f"ssh {host}:{port} reachable, host key known")


def _known_host(path: str | None, host: str, port: int) -> bool:
    if not path:
        return False
    keys = paramiko.HostKeys()
    try:
        keys.load(str(Path(path).expanduser()))
    except OSError:
        return False
    name = host if port == 22 else f"[{host}]:{port}"
    return keys.lookup(name) is not None


def _tcp_connect(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=5):
        pass


def _rows(api: DoctorApi, path: str, **params: str | int) -> list[dict[str, Any]]:
    try:
        rows = api.get(path, **params)
    except PvestackError:
        return []
    return [r for r in rows or [] if isinstance(r, dict)]


def render_doctor(report: DoctorReport) -> str:
    lines = []
    for f in report.findings:
        line = f"{f.status.value.upper():4}  {f.check}: {f.evidence}"
        if f.fix and f.status is not Status.PASS:
            line += f"  -> fix: {f.fix}"
        lines.append(line)
    fails = sum(f.status is Status.FAIL for f in report.findings)
    warns = sum(f.status is Status.WARN for f in report.findings)
    lines.append(f"doctor: {fails} fail, {warns} warn, {len(report.findings)} checks")
    return "\n".join(lines)
