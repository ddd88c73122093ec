"""The guest planner: the in-container actions of one stack, from its typed guest facts
(``pvestack._guestfacts``) and the step builders of ``pvestack._steps.guest``.

Actions, in order: ``docker`` (when Docker or compose is not ready), one ``file:PATH``
per file not in sync, one ``image:REF`` per image not present, ``up`` when anything
changed or a service is not running. Not observed (CT not running, no guest transport):
every fact unknown, and the steps decide by comparing bytes in the guest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pvestack._commands import Secret
from pvestack._guestfacts import (
    Absent,
    DockerFact,
    FileFact,
    GuestFacts,
    ImageFact,
    ManagedFact,
    Unreadable,
    YamlFact,
)
from pvestack._model import (
    Action,
    ActionKind,
    Actor,
    AppFile,
    AppSpec,
    Change,
    ImageSource,
    ObservedStack,
    Running,
    StackSpec,
    Target,
    TargetKind,
)
from pvestack._steps.guest import (
    docker_steps,
    file_step,
    file_want,
    image_step,
    managed_sha256,
    up_step,
    yaml_changes,
    yaml_want,
)


def _file_fact(
    f: AppFile, facts: GuestFacts
) -> tuple[FileFact | ManagedFact | YamlFact | Absent | Unreadable | None, object]:
    """The guest's fact of ``f`` (None: not read) and the fact it has when in sync."""
    if f.merge_yaml:
        return facts.yaml.get(f.path), yaml_want(f)
    if f.merge_env:
        return facts.managed.get(f.path), ManagedFact(managed_sha256(f))
    return facts.files.get(f.path), file_want(f)


def _file_state(f: AppFile, facts: GuestFacts | None) -> tuple[bool | None, str]:
    """(in sync?, what is there). None: not observed."""
    if facts is None:
        return None, "not observed"
    have, want = _file_fact(f, facts)
    if have is None or isinstance(have, Unreadable):
        return None, "not observed"
    if isinstance(have, Absent):
        return False, "absent"
    return have == want, "present"


def _text(fact: str | None) -> str:
    """A fact as the plan shows it; not read: ``unknown``."""
    return "unknown" if fact is None else str(fact)


def _secret_summary(f: AppFile) -> str:
    secrets = [p for p in f.content if isinstance(p, Secret)]
    return ", ".join(f"{s.name}=*** (sha256 {s.digest})" for s in secrets)


@dataclass(frozen=True)
class _Ctx:
    """What every guest action of one stack shares."""

    stack: StackSpec
    app: AppSpec
    vmid: int
    node: str
    facts: GuestFacts | None  # None: not observed (or the CT is not running)

    @property
    def seen(self) -> GuestFacts:
        return self.facts if self.facts is not None else GuestFacts()

    def action(self, suffix: str, kind: ActionKind, **kw: Any) -> Action:
        kw.setdefault("target", Target.lxc(self.node, self.vmid))
        return Action(
            id=f"{self.stack.name}:guest:{suffix}", kind=kind, actor=Actor.GUEST,
            stack=self.stack.name, precondition=Running(self.stack.name), **kw,
        )  # fmt: skip


def _docker_action(c: _Ctx) -> Action:
    seen = c.seen
    return c.action(
        "docker", ActionKind.GUEST_DOCKER,
        change=Change.CREATE if seen.docker is DockerFact.MISSING else Change.RUN,
        reason=f"Docker engine and compose ({c.app.docker_source})"
        + ("" if c.facts is not None else ": not observed, the step checks first"),
        before={"docker": _text(seen.docker)},
        after={"docker": "ok", "source": c.app.docker_source},
        steps=docker_steps(c.app, c.vmid),
    )  # fmt: skip


def _file_action(c: _Ctx, f: AppFile) -> Action | None:
    in_sync, there = _file_state(f, c.facts)
    if in_sync:
        return None
    after: dict[str, str | None] = {
        "mode": f.mode,
        "owner": f"{f.uid}:{f.gid}",
        "content": "changes" if in_sync is False and there == "present" else "new",
    }
    if in_sync is None:
        after["content"] = "written if different"
    secrets = _secret_summary(f)
    if secrets:
        after["secrets"] = secrets
    if f.merge_env or f.merge_yaml:
        after["other keys"] = "kept"
    fact = c.seen.yaml.get(f.path) if f.merge_yaml else None
    if in_sync is False and isinstance(fact, YamlFact):
        after["changed"] = ", ".join(yaml_changes(f, fact))
    if f.services:
        when = "a managed key changes" if f.merge_yaml else "the bytes change"
        after["restarts"] = ",".join(f.services) + f" (if {when})"
    return c.action(
        f"file:{f.path}", ActionKind.GUEST_FILE,
        change=Change.CREATE if there == "absent" else Change.UPDATE,
        target=Target(TargetKind.GUEST_PATH, c.node, c.vmid, f.path),
        reason=f"{c.app.recipe} file"
        + (" (not observed: written only if different)" if in_sync is None else ""),
        before={"file": there}, after=after, steps=(file_step(c.app, f, c.vmid),),
    )  # fmt: skip


def _image_action(c: _Ctx, img: ImageSource) -> Action | None:
    state = c.seen.images.get(img.ref)
    if state is ImageFact.PRESENT:
        return None
    return c.action(
        f"image:{img.ref}", ActionKind.GUEST_IMAGE, change=Change.CREATE,
        reason=("docker load from " + img.tarball) if img.tarball else "docker pull",
        before={"image": _text(state)}, after={"image": img.ref},
        steps=(image_step(img.ref, img.tarball, c.vmid),),
    )  # fmt: skip


def _up_action(c: _Ctx) -> Action:
    services = {s: c.seen.services.get(s) for s in c.app.services}
    return c.action(
        "up", ActionKind.GUEST_UP, change=Change.RUN,
        reason="compose up -d; restart only services whose files changed",
        before={s: _text(v.state if v is not None else None) for s, v in services.items()},
        after={s: "running" for s in c.app.services},
        steps=(up_step(c.stack, c.app, c.vmid),),
    )  # fmt: skip


def guest_actions(stack: StackSpec, observed: ObservedStack, vmid: int) -> tuple[Action, ...]:
    """The in-container actions of ``stack`` (empty when everything is in place)."""
    app = stack.app
    if app is None:
        return ()
    running = observed.container is not None and observed.container.status == "running"
    node = observed.container.node if observed.container is not None else stack.container.node
    # not running or not observed: every fact unknown (GuestFacts' defaults)
    c = _Ctx(stack, app, vmid, node, observed.guest_facts if running else None)
    seen = c.seen
    actions: list[Action] = [] if seen.docker_ready else [_docker_action(c)]
    files = [a for a in (_file_action(c, f) for f in app.files) if a is not None]
    images = [a for a in (_image_action(c, i) for i in app.images) if a is not None]
    actions += files + images
    services_ok = c.facts is not None and all(
        (v := seen.services.get(s)) is not None and v.state == "running" for s in app.services
    )
    if files or images or not seen.docker_ready or not services_ok:
        actions.append(_up_action(c))
    return tuple(actions)
