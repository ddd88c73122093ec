"""Who may call what: the lab's one table of PVE's privilege checks, each with its source.

The API server evaluates ``endpoint_check(method, template)`` before a handler runs (as
pve-http-server does with a method's ``permissions => { check => ... }``); checks that
depend on the parameters (which option, which bridge, which storage) run in the backend
and are listed here too (``Rule.check`` is None, ``Rule.detail`` says what they check and
where the lab does it). A unit test keeps every ``check`` equal to the one in PVE's API
schema (pve-docs apidata), so this table cannot drift from PVE.

Sources (PVE 9.1): pve-container ``src/PVE/API2/LXC.pm``, ``src/PVE/API2/LXC/Config.pm``,
``src/PVE/API2/LXC/Status.pm``, ``src/PVE/API2/LXC/Snapshot.pm``, ``src/PVE/LXC.pm``
(``check_ct_modify_config_perm``, ``check_bridge_access``); pve-guest-common
``src/PVE/GuestHelpers.pm`` (``check_vnet_access``, ``assert_tag_permissions``);
pve-storage ``src/PVE/API2/Storage/Status.pm`` (``download_url``), ``Content.pm``,
``src/PVE/Storage.pm`` (``check_volume_access``); pve-manager ``PVE/API2/Nodes.pm``
(``aplinfo``, ``apl_download``, ``status``), ``PVE/API2/APT.pm`` (``versions``),
``PVE/API2/Cluster.pm`` (``resources``, ``nextid``), ``PVE/API2/Tasks.pm``;
pve-access-control ``src/PVE/API2/AccessControl.pm`` (``permissions``).

The lab's default API token is ``pvestack@pve!deploy`` (privilege separation on) with the
role ``PVEStackDeploy`` below: exactly what pvestack's calls need (``deploy_grants``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pvelab.backend.auth import AuthStore

Check = list[Any]


@dataclass(frozen=True)
class Rule:
    method: str
    template: str
    check: Check | None  # None: "user => all" or checked in the backend (see ``detail``)
    source: str
    detail: str = ""


def _perm(path: str, *privs: str, any_: bool = False) -> Check:
    expr: Check = ["perm", path, list(privs)]
    if any_:
        expr += ["any", 1]
    return expr


_VM = "/vms/{vmid}"
_LXC = "/nodes/{node}/lxc/{vmid}"

RULES: tuple[Rule, ...] = (
    # ---------------------------------------------------------------- cluster, access
    Rule("GET", "/version", None, "pve-manager PVE/API2/Cluster.pm version: user => all"),
    Rule("GET", "/cluster/resources", None,
         "pve-manager PVE/API2/Cluster.pm resources: user => all",
         "each guest listed only with VM.Audit on /vms/<vmid>, each storage with "
         "Datastore.Audit|Datastore.AllocateSpace on /storage/<id> (Node.cluster_resources)"),
    Rule("GET", "/cluster/nextid", None, "pve-manager PVE/API2/Cluster.pm nextid: user => all"),
    Rule("GET", "/access/permissions", None,
         "pve-access-control src/PVE/API2/AccessControl.pm permissions",
         "own permissions and owned tokens' always; another user's need Sys.Audit on /access"),
    # ---------------------------------------------------------------- node
    Rule("GET", "/nodes/{node}/status", _perm("/nodes/{node}", "Sys.Audit"),
         "pve-manager PVE/API2/Nodes.pm status"),
    Rule("GET", "/nodes/{node}/apt/versions", _perm("/nodes/{node}", "Sys.Audit"),
         "pve-manager PVE/API2/APT.pm versions"),
    Rule("GET", "/nodes/{node}/network", None,
         "pve-manager PVE/API2/Network.pm index: user => all"),
    Rule("GET", "/nodes/{node}/aplinfo", None, "pve-manager PVE/API2/Nodes.pm aplinfo: all"),
    Rule("POST", "/nodes/{node}/aplinfo", _perm("/storage/{storage}", "Datastore.AllocateTemplate"),
         "pve-manager PVE/API2/Nodes.pm apl_download"),
    Rule("GET", "/nodes/{node}/tasks/{upid}/status", None,
         "pve-manager PVE/API2/Tasks.pm read_task_status: user => all",
         "someone else's task needs Sys.Audit on /nodes/<node> (Node._task_check)"),
    Rule("GET", "/nodes/{node}/tasks/{upid}/log", None,
         "pve-manager PVE/API2/Tasks.pm read_task_log: user => all",
         "someone else's task needs Sys.Audit on /nodes/<node> (Node._task_check)"),
    # ---------------------------------------------------------------- storage
    Rule("GET", "/nodes/{node}/storage", None,
         "pve-storage src/PVE/API2/Storage/Status.pm index: user => all",
         "a storage is listed with Datastore.Audit|Datastore.AllocateSpace on it"),
    Rule("GET", "/nodes/{node}/storage/{storage}/content",
         _perm("/storage/{storage}", "Datastore.Audit", "Datastore.AllocateSpace", any_=True),
         "pve-storage src/PVE/API2/Storage/Content.pm index"),
    Rule("POST", "/nodes/{node}/storage/{storage}/download-url",
         ["and", _perm("/storage/{storage}", "Datastore.AllocateTemplate"),
          ["or", _perm("/", "Sys.Audit", "Sys.Modify"),
           _perm("/nodes/{node}", "Sys.AccessNetwork")]],
         "pve-storage src/PVE/API2/Storage/Status.pm download_url"),
    # ---------------------------------------------------------------- containers
    Rule("POST", "/nodes/{node}/lxc", None,
         "pve-container src/PVE/API2/LXC.pm create_vm",
         "VM.Allocate on /vms/<vmid> (Node.create); Datastore.AllocateSpace on each new "
         "volume's storage; the template: Datastore.AllocateSpace|Datastore.Audit on its "
         "storage (PVE/Storage.pm check_volume_access); VM.PowerMgmt with start=1; every "
         "option as for PUT config"),
    Rule("PUT", _LXC + "/config",
         _perm(_VM, "VM.Config.Disk", "VM.Config.CPU", "VM.Config.Memory", "VM.Config.Network",
               "VM.Config.Options", any_=True),
         "pve-container src/PVE/API2/LXC/Config.pm update_vm, src/PVE/LXC.pm "
         "check_ct_modify_config_perm",
         "then per option: cores/cpuunits/cpulimit: VM.Config.CPU; memory/swap: "
         "VM.Config.Memory; rootfs/mpN: "
         "VM.Config.Disk (+ Datastore.AllocateSpace for a new volume); netN: "
         "VM.Config.Network + SDN.Use on /sdn/zones/localnetwork/<bridge>[/<tag>] "
         "(check_bridge_access, GuestHelpers check_vnet_access); hostname/nameserver/"
         "searchdomain: VM.Config.Network; features nesting: VM.Allocate; tags and every "
         "other option: VM.Config.Options (perms.check_ct_modify_config_perm)"),
    Rule("GET", _LXC + "/config", _perm(_VM, "VM.Audit"), "pve-container API2/LXC/Config.pm"),
    Rule("GET", _LXC + "/pending", _perm(_VM, "VM.Audit"), "pve-container API2/LXC.pm"),
    Rule("GET", _LXC + "/status/current", _perm(_VM, "VM.Audit"),
         "pve-container src/PVE/API2/LXC/Status.pm vm_status"),
    Rule("POST", _LXC + "/status/start", _perm(_VM, "VM.PowerMgmt"),
         "pve-container src/PVE/API2/LXC/Status.pm vm_start"),
    Rule("POST", _LXC + "/status/stop", _perm(_VM, "VM.PowerMgmt"),
         "pve-container src/PVE/API2/LXC/Status.pm vm_stop"),
    Rule("POST", _LXC + "/status/shutdown", _perm(_VM, "VM.PowerMgmt"),
         "pve-container src/PVE/API2/LXC/Status.pm vm_shutdown"),
    Rule("POST", _LXC + "/status/reboot", _perm(_VM, "VM.PowerMgmt"),
         "pve-container src/PVE/API2/LXC/Status.pm vm_reboot"),
    Rule("DELETE", _LXC, _perm(_VM, "VM.Allocate"), "pve-container src/PVE/API2/LXC.pm destroy_vm"),
    Rule("GET", _LXC + "/snapshot", _perm(_VM, "VM.Audit"),
         "pve-container src/PVE/API2/LXC/Snapshot.pm list"),
    Rule("POST", _LXC + "/snapshot", _perm(_VM, "VM.Snapshot"),
         "pve-container src/PVE/API2/LXC/Snapshot.pm snapshot"),
    Rule("DELETE", _LXC + "/snapshot/{snapname}", _perm(_VM, "VM.Snapshot"),
         "pve-container src/PVE/API2/LXC/Snapshot.pm delsnapshot"),
    Rule("POST", _LXC + "/snapshot/{snapname}/rollback",
         _perm(_VM, "VM.Snapshot", "VM.Snapshot.Rollback", any_=True),
         "pve-container src/PVE/API2/LXC/Snapshot.pm rollback"),
)  # fmt: skip

_BY_ENDPOINT = {(r.method, r.template): r for r in RULES}

#: pve-container src/PVE/LXC.pm check_ct_modify_config_perm: the privilege on /vms/<vmid>
#: each container option needs (create and PUT config); the extra rules per option (a new
#: volume's Datastore.AllocateSpace, SDN.Use on a bridge, root-only mount types, devices,
#: feature flags and hookscript) are in ``perms.check_ct_modify_config_perm``.
CT_OPTION_PRIVS: tuple[tuple[str, str], ...] = (
    (r"cores|cpuunits|cpulimit", "VM.Config.CPU"),
    (r"rootfs|mp\d+", "VM.Config.Disk"),
    (r"memory|swap", "VM.Config.Memory"),
    (r"net\d+|nameserver|searchdomain|hostname", "VM.Config.Network"),
    (r"tags", "VM.Config.Options"),  # pve-guest-common GuestHelpers assert_tag_permissions
    (r"features", "VM.Allocate"),  # nesting only; other flags are root@pam's
)


def ct_option_priv(opt: str) -> str:
    """The privilege an option needs; every other option: VM.Config.Options."""
    for pattern, priv in CT_OPTION_PRIVS:
        if re.fullmatch(pattern, opt):
            return priv
    return "VM.Config.Options"


def rule_for(method: str, template: str) -> Rule | None:
    return _BY_ENDPOINT.get((method, template))


def endpoint_check(method: str, template: str, schema: Mapping[str, Any]) -> Check | None:
    """The check the server runs before the handler: this table's, else the schema's."""
    rule = rule_for(method, template)
    if rule is not None:
        return rule.check
    check: Check | None = (schema.get("permissions") or {}).get("check")
    return check


def bridge_path(bridge: str, tag: str | int | None = None) -> str:
    """GuestHelpers check_vnet_access: a plain bridge is a vnet of zone ``localnetwork``."""
    base = f"/sdn/zones/localnetwork/{bridge}"
    return f"{base}/{tag}" if tag else base


# ---------------------------------------------------------------- the deploy token

DEPLOY_USER = "pvestack@pve"
DEPLOY_TOKEN = "pvestack@pve!deploy"  # noqa: S105 (an id, not a secret)
DEPLOY_ROLE = "PVEStackDeploy"
#: each privilege and the call that needs it (the README's "Token and privileges")
DEPLOY_PRIVS: dict[str, str] = {
    "VM.Allocate": "create and destroy the container; change its nesting flag",
    "VM.Audit": "see the container (cluster/resources, config, pending, status)",
    "VM.Config.CPU": "cores, cpulimit, cpuunits",
    "VM.Config.Memory": "memory, swap",
    "VM.Config.Disk": "rootfs and volume mount points",
    "VM.Config.Network": "net0, hostname, nameserver, searchdomain",
    "VM.Config.Options": "description (the pvestack mark), tags, onboot, ostype, ...",
    "VM.PowerMgmt": "start, shutdown, stop, reboot",
    "VM.Snapshot": "snapshots before risky changes",
    "VM.Backup": "backups (vzdump) of the container: pvestack backup",
    "Datastore.AllocateSpace": "allocate the rootfs and volumes on the rootdir storage",
    "Datastore.AllocateTemplate": "download the OS template (download-url, aplinfo)",
    "Datastore.Audit": "list the template storage's content",
    "SDN.Use": "attach net0 to the bridge",
    "Sys.Audit": "read the node's package versions (lxc-pve vs runc)",
    "Sys.AccessNetwork": "download-url (instead of Sys.Audit + Sys.Modify on /)",
}


def deploy_acl_paths(node: str, bridge: str) -> tuple[str, ...]:
    """Where the role is granted: guests, storages, the bridge and the node (never /)."""
    return ("/vms", "/storage", bridge_path(bridge), f"/nodes/{node}")


def grant_deploy_token(auth: AuthStore, node: str, bridge: str, secret: str | None = None) -> str:
    """As the README's ``pveum`` commands: the role, the user, the token (privsep=1) and the
    ACLs for both (a privsep token holds what both its own and its user's ACLs give)."""
    auth.set_role(DEPLOY_ROLE, DEPLOY_PRIVS)
    auth.add_user(DEPLOY_USER)
    secret = auth.add_token(DEPLOY_TOKEN, secret, privsep=True)
    for path in deploy_acl_paths(node, bridge):
        auth.acl_delete(path, DEPLOY_USER)
        auth.acl_delete(path, DEPLOY_TOKEN)
        auth.acl_modify(path, DEPLOY_USER, [DEPLOY_ROLE])
        auth.acl_modify(path, DEPLOY_TOKEN, [DEPLOY_ROLE])
    return secret
