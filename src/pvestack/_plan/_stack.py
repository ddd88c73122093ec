"""One stack's plan: refuse foreign guests, else create or update its container, then
the root steps, the start or reboot, the probes and the guest's part."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from pvestack._commands import display
from pvestack._errors import HostKeyError
from pvestack._model import (
    Absent,
    Action,
    ActionKind,
    Actor,
    ApiCall,
    BindMount,
    Change,
    GuestAccess,
    ObservedContainer,
    ObservedStack,
    StackSpec,
    Target,
    TargetKind,
    TemplateAbsent,
    TemplateSpec,
)
from pvestack._plan import _actions as build
from pvestack._plan._actions import StackCtx
from pvestack._plan._guest import guest_actions
from pvestack._plan._update import changed_binds, resize_diff, token_diff, unknown_mounts
from pvestack._plan._upgrade import UpgradeInputs, fold_upgrade
from pvestack._plan._values import TOKEN_FEATURES
from pvestack._pvevalues import format_features, idmap_lines
from pvestack._steps.guest_access import (
    guest_access_steps,
    parse_hostkey_record,
    ssh_public_keys_param,
)


class StackPlanner:
    def __init__(
        self,
        spec: StackSpec,
        obs: ObservedStack,
        *,
        adopt: bool,
        guest: GuestAccess | None = None,
        upgrade: UpgradeInputs | None = None,
    ) -> None:
        self.ctx = StackCtx(spec, obs, spec.container.node, obs.vmid or 0, adopt)
        self.guest_access = guest
        self.upgrade = upgrade or UpgradeInputs()
        self.actions: list[Action] = []
        self.refused: list[str] = []
        self.warnings: list[str] = []

    def _add(self, action: Action | None) -> None:
        if action is not None:
            self.actions.append(action)

    # -------------------------------------------------------------- entry

    def run(self) -> None:
        c = self.ctx
        if c.obs.vmid is None:
            self.refused.append(f"{c.name}: no vmid could be chosen")
            return
        if self._refuse_foreign():
            return
        existing = c.obs.container
        if existing is None:
            self._plan_create()
            return
        if existing.node != c.node:
            self.warnings.append(
                f"{c.name}: lxc/{existing.vmid} is on node {existing.node}, the stack file says "
                f"{c.node}; pvestack works on it where it is and does not migrate it"
            )
            self.ctx = replace(c, node=existing.node)
        self._plan_update(existing)

    def _refuse_foreign(self) -> bool:
        c = self.ctx
        f = c.obs.foreign
        if f is None:
            return False
        existing = c.obs.container
        what = f"{f.type}/{f.vmid} on {f.node} ({f.name or 'no name'})"
        if f.type != "lxc":
            self.refused.append(
                f"{c.name}: {what} is a VM, not a container; pvestack never touches it "
                "(choose another vmid)"
            )
        elif existing is not None and existing.owner_stack not in (None, c.name):
            self.refused.append(
                f"{c.name}: {what} belongs to stack {existing.owner_stack!r}; "
                "pvestack will not take it over"
            )
        elif not c.adopt:
            self.refused.append(
                f"{c.name}: {what} exists without the pvestack mark; it is left untouched "
                "(check it is the right guest, then pass --adopt to manage it: "
                "the plan shows the diff first)"
            )
        else:
            self.warnings.append(f"{c.name}: adopting {what} (--adopt): the mark will be added")
            return False
        return True

    # -------------------------------------------------------------- create

    def _plan_create(self) -> None:
        c = self.ctx
        ct = c.ct
        if not c.obs.template_present:
            self._add(self._template())
        self._add(self._create())
        root_features = {k: v for k, v in ct.features.items() if k not in TOKEN_FEATURES}
        set_keys: dict[str, str] = {}
        if root_features or (not ct.unprivileged and ct.features):
            set_keys["features"] = format_features(ct.features)
        for bm in ct.bind_mounts:
            set_keys[bm.key] = bm.pve_value
        self._host_dirs(ct.bind_mounts, configure=set(ct.bind_mounts))
        if set_keys:
            self._add(build.root_set(c, set_keys, {}))
        self._idmap(None)
        if ct.start:
            self._add(build.start(c))
        self._probes(ct.bind_mounts)
        if ct.start:
            self._guest_access(str(ct.api_config.get("description", "")), created=True)
        self._guest()

    def _template_call(self, t: TemplateSpec) -> ApiCall:
        """PVE's aplinfo download for an appliance, else download-url (a URL without a
        checksum is downloaded unverified: the plan warns)."""
        c = self.ctx
        if t.appliance:
            params: dict[str, str | int] = {"storage": t.storage, "template": t.filename}
            return ApiCall("POST", f"/nodes/{c.node}/aplinfo", params)
        params = {"content": "vztmpl", "filename": t.filename, "url": t.url}
        if t.checksum and t.checksum_algorithm:
            params["checksum"] = t.checksum
            params["checksum-algorithm"] = t.checksum_algorithm
        else:
            self.warnings.append(
                f"{c.name}: template {display(t.url)} has no checksum: the node downloads it "
                "unverified (set checksum + checksum_algorithm, or appliance = "
                '"debian-13-standard" from the node\'s index)'
            )
        return ApiCall("POST", f"/nodes/{c.node}/storage/{t.storage}/download-url", params)

    def _template(self) -> Action:
        c = self.ctx
        t = c.obs.template or c.ct.template
        return Action(
            id=f"{c.name}:template",
            kind=ActionKind.TEMPLATE_DOWNLOAD,
            change=Change.CREATE,
            target=Target(TargetKind.TEMPLATE, c.node, None, t.volid),
            actor=Actor.API,
            reason="the template storage lacks the OS template",
            precondition=TemplateAbsent(t.storage, t.volid),
            stack=c.name,
            after={"volid": t.volid, "url": t.url},
            api=(self._template_call(t),),
        )

    def _create(self) -> Action:
        c = self.ctx
        ct = c.ct
        tpl = c.obs.template or ct.template  # an appliance resolved through aplinfo
        params: dict[str, str | int] = {
            "vmid": c.vmid,
            "ostemplate": tpl.volid,
            "unprivileged": int(ct.unprivileged),
            **dict(ct.api_config),
        }
        if "nesting" in ct.features and ct.unprivileged:
            params["features"] = "nesting=1"
        for vm in ct.volume_mounts:
            params[vm.key] = vm.pve_value
        if ct.protection:
            params["protection"] = 1
        params.update(self._create_key())
        after: dict[str, str | None] = {
            k: str(v) for k, v in params.items() if k not in ("vmid", "description")
        }
        after["description"] = str(ct.api_config.get("description", ""))
        return Action(
            id=f"{c.name}:ct:create",
            kind=ActionKind.CREATE,
            change=Change.CREATE,
            target=c.target,
            actor=Actor.API,
            reason="no container at this vmid",
            precondition=Absent(c.vmid, c.name, tpl.storage, tpl.volid),
            stack=c.name,
            after=after,
            api=(ApiCall("POST", f"/nodes/{c.node}/lxc", params),),
        )

    # -------------------------------------------------------------- update

    def _plan_update(self, cur: ObservedContainer) -> None:
        c = self.ctx
        ct = c.ct
        cfg = cur.config
        unpriv_now = cfg.get("unprivileged", "0") == "1"
        if unpriv_now != ct.unprivileged:
            self._add(self._replace(unpriv_now))
            return
        diff = token_diff(c.name, ct, cfg)
        self.warnings.extend(diff.warnings)
        if diff.set or diff.deletes:
            self._add(self._config_update(diff.set, diff.deletes, diff.before, diff.after))
        self._resize(cfg)
        root_set: dict[str, str] = {}
        if diff.root_features is not None:
            root_set["features"] = diff.root_features
        changed = changed_binds(ct, cfg)
        root_set.update({bm.key: bm.pve_value for bm in changed})
        self.warnings.extend(unknown_mounts(c.name, ct, cfg))
        self._host_dirs(ct.bind_mounts, configure=set(changed))
        if root_set:
            self._add(build.root_set(c, root_set, {k: cfg.get(k) for k in root_set}))
        idmap_changed = self._idmap(cfg)
        self._power(cur, root=bool(root_set) or idmap_changed, nesting="features" in diff.set)
        running = cur.status == "running"
        if changed or (not running and ct.start and root_set):
            self._probes(changed or ct.bind_mounts)
        if running or ct.start:
            desc = diff.set.get("description", cfg.get("description", ""))
            self._guest_access(str(desc), created=False, observed=cfg.get("description", ""))
        self._guest()

    def _power(self, cur: ObservedContainer, *, root: bool, nesting: bool) -> None:
        """Reboot a running CT whose new config waits for the next start; start a stopped one."""
        running = cur.status == "running"
        if running and (root or nesting or cur.pending):
            self._add(build.reboot(self.ctx, root=root, pending=cur.pending))
        elif not running and self.ctx.ct.start:
            self._add(build.start(self.ctx))

    def _replace(self, unpriv_now: bool) -> Action:
        c = self.ctx
        return Action(
            id=f"{c.name}:ct:replace",
            kind=ActionKind.REPLACE,
            change=Change.REPLACE,
            target=c.target,
            actor=Actor.API,
            reason=(
                "unprivileged cannot change after creation (PVE: unable to modify read-only "
                "option: 'unprivileged'); destroy and re-create the container yourself "
                "if you mean it. pvestack never does it."
            ),
            precondition=c.ours,
            stack=c.name,
            before={"unprivileged": str(int(unpriv_now))},
            after={"unprivileged": str(int(c.ct.unprivileged))},
        )

    def _config_update(
        self,
        token_set: Mapping[str, str | int],
        deletes: Sequence[str],
        before: Mapping[str, str | None],
        after: Mapping[str, str | None],
    ) -> Action:
        c = self.ctx
        params: dict[str, str | int] = dict(token_set)
        if deletes:
            params["delete"] = ",".join(deletes)
        return Action(
            id=f"{c.name}:ct:config",
            kind=ActionKind.CONFIG_UPDATE,
            change=Change.UPDATE,
            target=c.target,
            actor=Actor.API,
            reason="token-safe settings differ: " + ", ".join(sorted(after)),
            precondition=c.ours,
            stack=c.name,
            before=dict(before),
            after=dict(after),
            api=(ApiCall("PUT", f"{c.ct_path}/config", params, waits_task=False),),
        )

    def _resize(self, cfg: Mapping[str, str]) -> None:
        c = self.ctx
        r = resize_diff(c.name, c.ct, cfg)
        self.warnings.extend(r.warnings)
        if r.grow_to is None or r.have is None:
            return
        self._add(
            Action(
                id=f"{c.name}:ct:resize",
                kind=ActionKind.RESIZE,
                change=Change.UPDATE,
                target=c.target,
                actor=Actor.API,
                reason="the root disk is smaller than disk_gb",
                precondition=c.ours,
                stack=c.name,
                before={"rootfs.size": f"{r.have:g}G"},
                after={"rootfs.size": f"{r.grow_to}G"},
                api=(
                    ApiCall(
                        "PUT", f"{c.ct_path}/resize", {"disk": "rootfs", "size": f"{r.grow_to}G"}
                    ),
                ),
            )
        )

    # -------------------------------------------------------------- pieces

    def _host_dirs(self, mounts: Sequence[BindMount], *, configure: set[BindMount]) -> None:
        facts = {f.path: f for f in self.ctx.obs.host_paths}
        for bm in mounts:
            fact = facts.get(bm.host_path)
            self._add(build.host_dir(self.ctx, bm, fact, configure=bm in configure))

    def _idmap(self, cfg: Mapping[str, str] | None) -> bool:
        idmap = self.ctx.ct.idmap
        want = tuple(e.lxc_line for e in idmap.entries) if idmap.custom else ()
        have = idmap_lines(cfg) if cfg is not None else ()
        if want == have or (not idmap.custom and (cfg is None or not have)):
            return False
        self._add(build.idmap(self.ctx, have, want, exists=cfg is not None))
        return True

    def _probes(self, mounts: Sequence[BindMount]) -> None:
        for bm in mounts:
            self._add(build.probe(self.ctx, bm))

    def _guest(self) -> None:
        c = self.ctx
        if c.spec.app is not None:
            acts = guest_actions(c.spec, c.obs, c.vmid)
            u = self.upgrade
            self.actions.extend(
                fold_upgrade(c.spec, c.obs, c.vmid, acts, u.storage_types, force_backup=u.backup)
            )

    # -------------------------------------------------------------- guest access (ssh)

    def _create_key(self) -> dict[str, str]:
        """``ssh-public-keys`` at create (token-safe) when the guest route is SSH."""
        g = self.guest_access
        if g is None or g.via != "ssh":
            return {}
        if g.public_key is None:
            self.warnings.append(
                f"{self.ctx.name}: a new SSH key for the guest route will be generated at "
                "apply (ssh-public-keys at create)"
            )
            return {}
        return ssh_public_keys_param(g.public_key)

    def _guest_access(self, desc: str, *, created: bool, observed: str = "") -> None:
        """The root steps that open the CT's own SSH door (sshd, the key, the host-key
        record), when the description has no record or the CT refused the key."""
        g = self.guest_access
        if g is None or g.via != "ssh":
            return
        try:
            recorded = parse_hostkey_record(observed) is not None
        except HostKeyError:
            recorded = False  # malformed: the record step writes a good one
        if recorded and not g.key_refused and not created:
            return
        key_at_create = created and g.public_key is not None
        steps = guest_access_steps(self.ctx.vmid, desc, g.public_key, key_at_create=key_at_create)
        self._add(build.guest_access(self.ctx, steps, key_refused=g.key_refused))
