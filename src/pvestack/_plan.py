"""Desired vs observed -> an ordered ``Plan`` of ``Action``s, each tagged with its actor.

Routing follows PVE's real permission rules (pve-container
``check_ct_modify_config_perm``): an API token is never root@pam, so

* token (``api``): template download, create with the token-safe keys
  (``features: nesting=1`` alone included), config updates of those keys,
  volume mount points, resize, start/reboot;
* ``root``: any other feature flag (keyctl, fuse, mknod, mount), bind mounts,
  the id map (``lxc.idmap`` is not an API key), host directories and their
  ownership, and the reboot that makes those take effect on a running CT;
* ``guest``: inside the container (from ``pvestack._steps.guest`` when present).

``unprivileged`` cannot change after creation: a difference is reported as a
``replace`` action that is never carried out. Guests without the pvestack mark
are refused unless ``adopt``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pvestack._model import (
    MARK_TAG,
    Action,
    Actor,
    ApiCall,
    BindMount,
    Change,
    ContainerSpec,
    DesiredState,
    HostPathFact,
    IdMap,
    ObservedContainer,
    ObservedStack,
    ObservedState,
    Plan,
    StackSpec,
    TemplateSpec,
)
from pvestack._steps import guest as guest_steps
from pvestack._steps import root as root_steps

#: the feature flags a token may set (alone, on an unprivileged CT)
TOKEN_FEATURES = frozenset({"nesting"})
#: net0 properties PVE adds itself
_NET_SERVER_KEYS = frozenset({"hwaddr", "type"})
#: keys pvestack may delete when the stack file no longer sets them
_DELETABLE = ("nameserver", "searchdomain")


# ---------------------------------------------------------------- value helpers


def split_props(value: str, *, first_key: str | None = None) -> dict[str, str]:
    """``a=1,b=2`` -> dict; a leading bare item goes under ``first_key``."""
    out: dict[str, str] = {}
    for i, item in enumerate(p for p in str(value).split(",") if p != ""):
        if "=" in item:
            k, _, v = item.partition("=")
            out[k.strip()] = v.strip()
        elif i == 0 and first_key:
            out[first_key] = item.strip()
        else:
            out[item.strip()] = "1"
    return out


def format_features(features: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(features.items()))


def parse_features(value: str | None) -> dict[str, str]:
    if not value:
        return {}
    out = split_props(value)
    return {k: v for k, v in out.items() if v not in ("0", "")}


def _tags(value: Any) -> tuple[str, ...]:
    text = str(value or "").replace(",", ";").replace(" ", ";")
    return tuple(sorted({t.strip().lower() for t in text.split(";") if t.strip()}))


def _size_gb(value: str) -> float | None:
    m = re.search(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)", value)
    if not m:
        return None
    n = float(m.group(1))
    return n * {"K": 1 / 1024**2, "M": 1 / 1024, "G": 1, "T": 1024, "": 1 / 1024**3}[m.group(2)]


def same_value(key: str, desired: str | int, observed: str | None) -> bool:
    """Whether ``observed`` (GET .../config) already is ``desired`` (as sent at create)."""
    d = str(desired)
    if observed is None:
        return key == "onboot" and d == "0"
    o = str(observed)
    if key == "tags":
        return _tags(d) == _tags(o)
    if key == "description":
        return d.strip() == o.strip()
    if key == "nameserver":
        return d.split() == o.split()
    if key.startswith("net"):
        dp = split_props(d)
        op = {k: v for k, v in split_props(o).items() if k not in _NET_SERVER_KEYS or k in dp}
        return dp == op
    if key == "rootfs":
        ds = d.split(":", 1)
        return o.startswith(ds[0] + ":") and _size_gb(o) == float(ds[1])
    return d == o


def _observed_idmap(cfg: Mapping[str, str]) -> tuple[str, ...]:
    """``lxc.idmap`` lines as GET .../config shows them (a list of [key, value] pairs)."""
    raw = cfg.get("lxc", "")
    return tuple(
        " ".join(v.split()) for v in re.findall(r"lxc\.idmap['\"]?\s*[,:=]\s*['\"]([^'\"]+)", raw)
    )


# ---------------------------------------------------------------- plan


def plan(
    desired: DesiredState,
    observed: ObservedState,
    *,
    adopt: bool = False,
    chown_recursive: bool = False,
) -> Plan:
    actions: list[Action] = []
    refused: list[str] = []
    warnings: list[str] = []
    for spec in _ordered(desired.stacks):
        obs = observed.stack(spec.name)
        p = _StackPlanner(spec, obs, adopt=adopt, chown_recursive=chown_recursive)
        p.run()
        actions.extend(p.actions)
        refused.extend(p.refused)
        warnings.extend(p.warnings)
    return Plan(actions=tuple(actions), refused=tuple(refused), warnings=tuple(warnings))


def _ordered(stacks: Sequence[StackSpec]) -> list[StackSpec]:
    """Stacks in dependency order (``depends_on`` first), else file order."""
    done: list[StackSpec] = []
    names = {s.name: s for s in stacks}
    seen: set[str] = set()

    def visit(s: StackSpec, path: tuple[str, ...]) -> None:
        if s.name in seen or s.name in path:
            return
        for d in s.depends_on:
            if d in names:
                visit(names[d], (*path, s.name))
        seen.add(s.name)
        done.append(s)

    for s in stacks:
        visit(s, ())
    return done


class _StackPlanner:
    def __init__(
        self, spec: StackSpec, obs: ObservedStack, *, adopt: bool, chown_recursive: bool
    ) -> None:
        self.spec = spec
        self.ct: ContainerSpec = spec.container
        self.obs = obs
        self.adopt = adopt
        self.chown_recursive = chown_recursive
        self.actions: list[Action] = []
        self.refused: list[str] = []
        self.warnings: list[str] = []
        self.node = self.ct.node
        self.vmid = obs.vmid if obs.vmid is not None else 0

    # -------------------------------------------------------------- helpers

    @property
    def target(self) -> str:
        return f"lxc/{self.vmid} on {self.node}"

    def _add(self, **kw: Any) -> None:
        kw.setdefault("stack", self.spec.name)
        kw.setdefault("target", self.target)
        self.actions.append(Action(**kw))

    @property
    def ct_path(self) -> str:
        return f"/nodes/{self.node}/lxc/{self.vmid}"

    # -------------------------------------------------------------- entry

    def run(self) -> None:
        obs = self.obs
        name = self.spec.name
        if obs.vmid is None:
            self.refused.append(f"{name}: no vmid could be chosen")
            return
        existing = obs.container
        if obs.foreign is not None:
            f = obs.foreign
            what = f"{f.type}/{f.vmid} on {f.node} ({f.name or 'no name'})"
            if f.type != "lxc":
                self.refused.append(
                    f"{name}: {what} is a VM, not a container; pvestack never touches it "
                    f"(choose another vmid)"
                )
                return
            if existing is not None and existing.owner_stack not in (None, name):
                self.refused.append(
                    f"{name}: {what} belongs to stack {existing.owner_stack!r}; "
                    "pvestack will not take it over"
                )
                return
            if not self.adopt:
                self.refused.append(
                    f"{name}: {what} exists without the pvestack mark; it is left untouched "
                    "(check it is the right guest, then pass --adopt to manage it: "
                    "the plan shows the diff first)"
                )
                return
            self.warnings.append(f"{name}: adopting {what} (--adopt): the mark will be added")
        if existing is None:
            self._plan_create()
        else:
            if existing.node != self.node:
                self.warnings.append(
                    f"{name}: lxc/{existing.vmid} is on node {existing.node}, the stack file says "
                    f"{self.node}; pvestack works on it where it is and does not migrate it"
                )
                self.node = existing.node
            self._plan_update(existing)

    # -------------------------------------------------------------- create

    def _template_call(self, t: TemplateSpec) -> ApiCall:
        """PVE's aplinfo download for an appliance, else download-url (a URL without a
        checksum is downloaded unverified: the plan warns)."""
        if t.appliance:
            params: dict[str, str | int] = {"storage": t.storage, "template": t.filename}
            return ApiCall("POST", f"/nodes/{self.node}/aplinfo", params)
        params = {"content": "vztmpl", "filename": t.filename, "url": t.url}
        if t.checksum and t.checksum_algorithm:
            params["checksum"] = t.checksum
            params["checksum-algorithm"] = t.checksum_algorithm
        else:
            self.warnings.append(
                f"{self.spec.name}: template {t.url} has no checksum: the node downloads it "
                "unverified (set checksum + checksum_algorithm, or appliance = "
                '"debian-13-standard" from the node\'s index)'
            )
        return ApiCall("POST", f"/nodes/{self.node}/storage/{t.storage}/download-url", params)

    def _plan_create(self) -> None:
        ct = self.ct
        t = self.obs.template or ct.template
        if not self.obs.template_present:
            self._add(
                id=f"{self.spec.name}:template",
                change=Change.CREATE,
                target=f"{t.volid} on {self.node}",
                actor=Actor.API,
                reason="the template storage lacks the OS template",
                after={"volid": t.volid, "url": t.url},
                api=(self._template_call(t),),
                precondition=f"template-missing:{t.storage}:{t.volid}",
            )
        params = {
            "vmid": self.vmid,
            "ostemplate": t.volid,
            "unprivileged": int(ct.unprivileged),
            **dict(ct.api_config),
        }
        if "nesting" in ct.features and ct.unprivileged:
            params["features"] = "nesting=1"
        for vm in ct.volume_mounts:
            params[vm.key] = vm.pve_value
        if ct.protection:
            params["protection"] = 1
        after: dict[str, str | None] = {
            k: str(v) for k, v in params.items() if k not in ("vmid", "description")
        }
        after["description"] = str(ct.api_config.get("description", ""))
        self._add(
            id=f"{self.spec.name}:ct:create",
            change=Change.CREATE,
            actor=Actor.API,
            reason="no container at this vmid",
            after=after,
            api=(ApiCall("POST", f"/nodes/{self.node}/lxc", params),),
            precondition=f"vmid-free:{self.vmid}",
        )
        root_features = {k: v for k, v in ct.features.items() if k not in TOKEN_FEATURES}
        set_keys: dict[str, str] = {}
        if root_features or (not ct.unprivileged and ct.features):
            set_keys["features"] = format_features(ct.features)
        for bm in ct.bind_mounts:
            set_keys[bm.key] = bm.pve_value
        self._host_dirs(ct.bind_mounts, creating=True)
        if set_keys:
            self._root_set(set_keys, {}, (), why=self._root_reason(set_keys))
        self._idmap(None)
        if ct.start:
            self._start()
        self._probes(ct.bind_mounts)
        self._guest()

    # -------------------------------------------------------------- update

    def _plan_update(self, cur: ObservedContainer) -> None:
        ct = self.ct
        cfg = cur.config
        owned = f"owned:{self.spec.name}" if not self.adopt else f"adopt:{self.spec.name}"
        unpriv_now = cfg.get("unprivileged", "0") == "1"
        if unpriv_now != ct.unprivileged:
            self._add(
                id=f"{self.spec.name}:ct:replace",
                change=Change.REPLACE,
                actor=Actor.API,
                reason=(
                    "unprivileged cannot change after creation (PVE: unable to modify read-only "
                    "option: 'unprivileged'); destroy and re-create the container yourself "
                    "if you mean it. pvestack never does it."
                ),
                before={"unprivileged": str(int(unpriv_now))},
                after={"unprivileged": str(int(ct.unprivileged))},
                precondition=owned,
            )
            return
        # token-safe keys
        token_set: dict[str, str | int] = {}
        before: dict[str, str | None] = {}
        after: dict[str, str | None] = {}
        for key, value in ct.api_config.items():
            if key == "rootfs":
                continue
            if not same_value(key, value, cfg.get(key)):
                token_set[key] = value
                before[key] = cfg.get(key)
                after[key] = str(value)
        deletes = [k for k in _DELETABLE if k not in ct.api_config and k in cfg]
        for k in deletes:
            before[k] = cfg[k]
            after[k] = None
        if ct.protection and cfg.get("protection") != "1":
            token_set["protection"] = 1
            before["protection"] = cfg.get("protection")
            after["protection"] = "1"
        for vm in ct.volume_mounts:
            cur_v = cfg.get(vm.key)
            if cur_v is None:
                token_set[vm.key] = vm.pve_value
                before[vm.key] = None
                after[vm.key] = vm.pve_value
            elif split_props(cur_v, first_key="volume").get("mp") != vm.ct_path:
                self.warnings.append(
                    f"{self.spec.name}: {vm.key} is {cur_v!r}, the stack file wants a volume at "
                    f"{vm.ct_path}; pvestack does not move volumes (their data would be at risk)"
                )
        # features: the token may change nesting alone (unprivileged CT)
        cur_feat = parse_features(cfg.get("features"))
        want_feat = dict(ct.features)
        root_set: dict[str, str] = {}
        feature_change = cur_feat != want_feat
        if feature_change:
            changed = {
                k for k in set(cur_feat) | set(want_feat) if cur_feat.get(k) != want_feat.get(k)
            }
            if changed <= TOKEN_FEATURES and ct.unprivileged:
                token_set["features"] = format_features(want_feat)
                before["features"] = cfg.get("features")
                after["features"] = format_features(want_feat) or None
            else:
                root_set["features"] = format_features(want_feat)
        if token_set or deletes:
            params: dict[str, str | int] = dict(token_set)
            if deletes:
                params["delete"] = ",".join(deletes)
            self._add(
                id=f"{self.spec.name}:ct:config",
                change=Change.UPDATE,
                actor=Actor.API,
                reason="token-safe settings differ: " + ", ".join(sorted(after)),
                before=before,
                after=after,
                api=(ApiCall("PUT", f"{self.ct_path}/config", params, waits_task=False),),
                precondition=owned,
            )
        self._resize(cfg, owned)
        # bind mounts (root)
        changed_mounts: list[BindMount] = []
        for bm in ct.bind_mounts:
            cur_v = cfg.get(bm.key)
            if cur_v is None or not _same_bind(bm, cur_v):
                root_set[bm.key] = bm.pve_value
                changed_mounts.append(bm)
        known = {m.key for m in ct.bind_mounts} | {m.key for m in ct.volume_mounts}
        for key in sorted(cfg):
            if re.fullmatch(r"mp\d+", key) and key not in known:
                self.warnings.append(
                    f"{self.spec.name}: {key} ({cfg[key]}) is not in the stack file; "
                    "pvestack leaves it in place"
                )
        self._host_dirs(ct.bind_mounts, creating=False, changed=changed_mounts)
        root_before = {k: cfg.get(k) for k in root_set}
        if root_set:
            self._root_set(root_set, root_before, (), why=self._root_reason(root_set, root_before))
        idmap_changed = self._idmap(cfg)
        running = cur.status == "running"
        needs_reboot = bool(root_set) or idmap_changed or "features" in token_set
        if running and (needs_reboot or cur.pending):
            self._reboot(root=bool(root_set) or idmap_changed, pending=cur.pending)
        elif not running and ct.start:
            self._start()
        if changed_mounts or (not running and ct.start and root_set):
            self._probes(changed_mounts or ct.bind_mounts)
        self._guest()

    def _resize(self, cfg: Mapping[str, str], owned: str) -> None:
        want = str(self.ct.api_config.get("rootfs", ""))
        cur = cfg.get("rootfs")
        if not want or not cur:
            return
        storage, _, size = want.partition(":")
        have = _size_gb(cur)
        if not cur.startswith(storage + ":"):
            self.warnings.append(
                f"{self.spec.name}: rootfs is on {cur.split(':', 1)[0]}, the stack file says "
                f"{storage}; pvestack does not move disks"
            )
        if have is None:
            return
        if float(size) > have:
            self._add(
                id=f"{self.spec.name}:ct:resize",
                change=Change.UPDATE,
                actor=Actor.API,
                reason="the root disk is smaller than disk_gb",
                before={"rootfs.size": f"{have:g}G"},
                after={"rootfs.size": f"{size}G"},
                api=(
                    ApiCall(
                        "PUT", f"{self.ct_path}/resize", {"disk": "rootfs", "size": f"{size}G"}
                    ),
                ),
                precondition=owned,
            )
        elif float(size) < have:
            self.warnings.append(
                f"{self.spec.name}: the root disk is {have:g}G, larger than disk_gb = {size}; "
                "PVE cannot shrink it, left as is"
            )

    # -------------------------------------------------------------- pieces

    def _root_reason(
        self, keys: Mapping[str, str], before: Mapping[str, str | None] | None = None
    ) -> str:
        parts = []
        if "features" in keys:
            want = parse_features(keys["features"])
            have = parse_features((before or {}).get("features"))
            extra = sorted(
                k
                for k in set(want) | set(have)
                if k not in TOKEN_FEATURES and want.get(k) != have.get(k)
            )
            if extra:
                parts.append(
                    f"feature flags {', '.join(extra)} (PVE: changing feature flags "
                    "(except nesting) is only allowed for root@pam)"
                )
            else:
                parts.append("features of a privileged container are root-only")
        mps = sorted(k for k in keys if k.startswith("mp"))
        if mps:
            parts.append(
                f"bind mounts {', '.join(mps)} (PVE: mount point type bind is only allowed "
                "for root@pam)"
            )
        return "; ".join(parts)

    def _root_set(
        self,
        set_keys: Mapping[str, str],
        before: Mapping[str, str | None],
        delete_keys: Sequence[str],
        *,
        why: str,
    ) -> None:
        self._add(
            id=f"{self.spec.name}:root:pct-set",
            change=Change.UPDATE if before else Change.CREATE,
            actor=Actor.ROOT,
            reason=why,
            before=dict(before),
            after=dict(set_keys),
            steps=(root_steps.pct_set_step(self.vmid, dict(set_keys), tuple(delete_keys)),),
            precondition=f"owned:{self.spec.name}" if not self.adopt else f"adopt:{self.spec.name}",
        )

    def _host_dirs(
        self,
        mounts: Iterable[BindMount],
        *,
        creating: bool,
        changed: Sequence[BindMount] = (),
    ) -> None:
        facts = {f.path: f for f in self.obs.host_paths}
        idmap = self.ct.idmap
        for bm in mounts:
            fact = facts.get(bm.host_path)
            need, reason, before = _host_dir_need(bm, idmap, fact)
            if fact is None:
                # without a root reader we cannot see the node: prepare it whenever the
                # mount is (re)configured; the step's guard makes it a no-op when done
                need = creating or bm in changed
                reason = "host directory for the bind mount (checked by the step's guard)"
            if not need:
                continue
            self._add(
                id=f"{self.spec.name}:host:{bm.key}",
                change=Change.CREATE if fact is None or not fact.exists else Change.UPDATE,
                target=f"{self.node}:{bm.host_path}",
                actor=Actor.ROOT,
                reason=reason,
                before=before,
                after={
                    "path": bm.host_path,
                    "owner": f"{_host_owner(bm, idmap)}",
                    "mode": bm.mode,
                },
                steps=(root_steps.host_dir_step(bm, idmap, chown_recursive=self.chown_recursive),),
                precondition="host",
            )

    def _idmap(self, cfg: Mapping[str, str] | None) -> bool:
        idmap = self.ct.idmap
        want = tuple(e.lxc_line for e in idmap.entries) if idmap.custom else ()
        have = _observed_idmap(cfg) if cfg is not None else ()
        if want == have or (not idmap.custom and cfg is None):
            return False
        if not idmap.custom and not have:
            return False
        self._add(
            id=f"{self.spec.name}:root:idmap",
            change=Change.UPDATE if cfg is not None else Change.CREATE,
            actor=Actor.ROOT,
            reason=(
                "lxc.idmap is not an API parameter (PVE answers 400: property is not defined in "
                "schema); it is written to /etc/pve/lxc/VMID.conf on the node, with matching "
                "/etc/subuid and /etc/subgid lines"
            ),
            before={"lxc.idmap": "; ".join(have) or None},
            after={"lxc.idmap": "; ".join(want) or None},
            steps=(root_steps.idmap_step(self.vmid, idmap),),
            precondition=f"owned:{self.spec.name}",
        )
        return True

    def _start(self) -> None:
        self._add(
            id=f"{self.spec.name}:ct:start",
            change=Change.RUN,
            actor=Actor.API,
            reason="the container should be running",
            before={"status": "stopped"},
            after={"status": "running"},
            api=(ApiCall("POST", f"{self.ct_path}/status/start", {}),),
            precondition=f"stopped:{self.spec.name}",
        )

    def _reboot(self, *, root: bool, pending: Sequence[str] = ()) -> None:
        reason = (
            "features, mounts or the id map changed on a running container: "
            "they take effect at the next start"
        )
        if pending:
            reason += f" (pending now: {', '.join(pending)})"
        self._add(
            id=f"{self.spec.name}:ct:reboot",
            change=Change.RUN,
            actor=Actor.ROOT if root else Actor.API,
            reason=reason,
            before={"status": "running"},
            after={"status": "running (rebooted)"},
            api=() if root else (ApiCall("POST", f"{self.ct_path}/status/reboot", {}),),
            steps=(root_steps.reboot_step(self.vmid),) if root else (),
            precondition=f"owned:{self.spec.name}",
        )

    def _probes(self, mounts: Sequence[BindMount]) -> None:
        for bm in mounts:
            steps = (root_steps.mount_probe_step(self.vmid, bm, self.ct.idmap),)
            self._add(
                id=f"{self.spec.name}:probe:{bm.key}",
                change=Change.RUN,
                actor=Actor.ROOT,
                reason=f"prove {bm.ct_path} is writable by uid {bm.owner_uid} in the container",
                after={"writable": bm.ct_path},
                steps=steps,
                precondition=f"running:{self.spec.name}",
            )

    def _guest(self) -> None:
        if self.spec.app is None:
            return
        self.actions.extend(guest_steps.guest_actions(self.spec, self.obs, self.vmid))


def _same_bind(bm: BindMount, value: str) -> bool:
    p = split_props(value, first_key="volume")
    if p.get("volume") != bm.host_path or p.get("mp") != bm.ct_path:
        return False
    if (p.get("ro") == "1") != bm.read_only:
        return False
    if bm.backup is not None and p.get("backup", "0") != str(int(bm.backup)):
        return False
    return not (bm.shared is not None and p.get("shared", "0") != str(int(bm.shared)))


def _host_owner(bm: BindMount, idmap: IdMap) -> str:
    try:
        return f"{idmap.host_uid(bm.owner_uid)}:{idmap.host_gid(bm.owner_gid)}"
    except ValueError:
        return "unmapped"


def _host_dir_need(
    bm: BindMount, idmap: IdMap, fact: HostPathFact | None
) -> tuple[bool, str, dict[str, str | None]]:
    if fact is None:
        return True, "", {}
    if not fact.exists:
        return True, "the host directory does not exist", {"path": None}
    want = _host_owner(bm, idmap)
    have = f"{fact.uid}:{fact.gid}"
    mode = fact.mode.zfill(4) if fact.mode is not None else None
    before: dict[str, str | None] = {"path": fact.path, "owner": have, "mode": mode}
    if have != want:
        return (
            True,
            f"owned by {have} on the host; container uid {bm.owner_uid} is host uid "
            f"{want.split(':')[0]} in an unprivileged container",
            before,
        )
    if fact.mode is not None and fact.mode.lstrip("0") != bm.mode.lstrip("0"):
        return True, f"mode {fact.mode}, want {bm.mode}", before
    return False, "", before


# ---------------------------------------------------------------- text output


def render_text(p: Plan, *, root_via: str = "") -> str:
    """Terraform-like text: one line per action, the keys that change, a summary."""
    lines: list[str] = []
    for r in p.refused:
        lines.append(f"  ! refused: {r}")
    if p.refused:
        lines.append("")
    for a in p.actions:
        sym = a.change.symbol
        lines.append(f"  {sym:<3} {a.id}  {a.target}  [{a.actor.value}]")
        if a.reason:
            lines.append(f"        # {a.reason}")
        keys = list(dict.fromkeys([*a.before.keys(), *a.after.keys()]))
        for k in keys:
            b = a.before.get(k)
            af = a.after.get(k)
            if k in a.before and k in a.after and b == af:
                continue
            if b is None and (a.change is Change.CREATE or k not in a.before):
                lines.append(f"        {k} = {_show(af)}")
            elif af is None:
                lines.append(f"        - {k} = {_show(b)}")
            else:
                lines.append(f"        {k}: {_show(b)} -> {_show(af)}")
    for w in p.warnings:
        lines.append(f"  warning: {w}")
    count = {c: sum(1 for a in p.actions if a.change is c) for c in Change}
    by_actor = {ac: len(p.by_actor(ac)) for ac in Actor}
    if not p.actions:
        lines.append("No changes. The stacks match the stack file.")
    else:
        lines.append("")
        via = f" (via {root_via})" if root_via else ""
        lines.append(
            f"Plan: {count[Change.CREATE]} to add, {count[Change.UPDATE]} to change, "
            f"{count[Change.DELETE]} to destroy, {count[Change.RUN]} to run, "
            f"{count[Change.REPLACE]} needing replacement; by actor: "
            f"{by_actor[Actor.API]} api token, {by_actor[Actor.ROOT]} root{via}, "
            f"{by_actor[Actor.GUEST]} guest."
        )
    return "\n".join(lines)


def _show(v: str | None) -> str:
    if v is None:
        return "(none)"
    text = str(v).replace("\n", "\\n")
    return f'"{text}"'


def is_marked(config: Mapping[str, str]) -> bool:
    return MARK_TAG in _tags(config.get("tags"))
