"""Presentation: plain text for plans, destroy plans and apply summaries.

The command line prints these; nothing here decides anything. Every value comes from
the typed plan values (``pvestack._model``); control characters are escaped.
"""

from __future__ import annotations

from collections.abc import Iterator

from pvestack._commands import display
from pvestack._model import Action, Actor, Change, Plan


def show(v: str | None) -> str:
    """A value for display: quoted, control characters escaped; ``(none)`` when absent."""
    if v is None:
        return "(none)"
    return '"' + safe(str(v)) + '"'


def safe(text: str) -> str:
    """``text`` with control characters (newlines, escape sequences) shown escaped: the one
    display function, ``_commands.display``."""
    return display(text)


def action_line(a: Action) -> str:
    return f"{a.change.symbol:<3} {a.id}  {a.target}  [{a.actor.value}]"


def _diff_lines(a: Action) -> Iterator[str]:
    keys = list(dict.fromkeys([*a.before.keys(), *a.after.keys()]))
    for k in keys:
        b = a.before.get(k)
        af = a.after.get(k)
        if k in a.before and k in a.after and b == af:
            continue
        if b is None and (a.change is Change.CREATE or k not in a.before):
            yield f"        {k} = {show(af)}"
        elif af is None:
            yield f"        - {k} = {show(b)}"
        else:
            yield f"        {k}: {show(b)} -> {show(af)}"


def _upgrade_lines(a: Action) -> Iterator[str]:
    u = a.upgrade
    if u is None:
        return
    head = "upgrade (resume)" if u.resume is not None else "upgrade"
    snap = "true" if u.snapshot else "false (" + "; ".join(u.blockers) + ")"
    backup = f"true (storage {u.backup_storage})" if u.backup else "false"
    yield f"        {head}: snapshot {safe(snap)}, backup {safe(backup)}, keep {u.keep}"


def summary(p: Plan, *, root_via: str = "") -> str:
    count = {c: sum(1 for a in p.actions if a.change is c) for c in Change}
    by_actor = {ac: len(p.by_actor(ac)) for ac in Actor}
    via = f" (via {root_via})" if root_via else ""
    return (
        f"Plan: {count[Change.CREATE]} to add, {count[Change.UPDATE]} to change, "
        f"{count[Change.DELETE]} to destroy, {count[Change.RUN]} to run, "
        f"{count[Change.REPLACE]} needing replacement; by actor: "
        f"{by_actor[Actor.API]} api token, {by_actor[Actor.ROOT]} root{via}, "
        f"{by_actor[Actor.GUEST]} guest."
    )


def render_text(p: Plan, *, root_via: str = "") -> str:
    """Terraform-like text: one line per action, the keys that change, a summary.

    "No changes" only when nothing is refused either: a refused guest blocks its stack.
    """
    lines: list[str] = [f"  ! refused: {safe(r)}" for r in p.refused]
    if p.refused:
        lines.append("")
    for a in p.actions:
        lines.append("  " + safe(action_line(a)))
        if a.reason:
            lines.append(f"        # {safe(a.reason)}")
        lines.extend(_diff_lines(a))
        lines.extend(_upgrade_lines(a))
    lines.extend(f"  warning: {safe(w)}" for w in p.warnings)
    if p.actions:
        lines += ["", summary(p, root_via=root_via)]
    elif p.refused:
        lines.append("Nothing to do for the other stacks; the refused guests block theirs.")
    else:
        lines.append("No changes. The stacks match the stack file.")
    return "\n".join(lines)
