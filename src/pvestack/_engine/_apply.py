"""Run a plan's actions in order, each precondition checked just before it runs.

``api`` actions go through the token's executor; ``root`` actions through the root
transport, ``guest`` actions through the guest transport (``RootAccess``). Without a
root transport root actions are *pending* with the reason, the stack's guest actions
wait for them, and the exit code is 3. Nothing here prints: progress goes to a hook.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pvestack._client import PveClient
from pvestack._engine._session import RootAccess
from pvestack._errors import GuestKeyRefused, PvestackError, ReplacementRequired
from pvestack._model import Action, ActionKind, Actor, Change, Plan
from pvestack.executors import ApiExecutor, GuestTransport, PreconditionChecker, RootTransport


class Outcome(StrEnum):
    DONE = "done"
    SKIPPED = "skipped"  # precondition says already done
    PENDING = "pending"  # waits for root (no transport) or for a pending root step
    FAILED = "failed"


@dataclass(frozen=True)
class ActionResult:
    action: Action
    outcome: Outcome
    detail: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            **self.action.to_json(),
            "outcome": self.outcome.value,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class ApplyResult:
    results: tuple[ActionResult, ...]
    plan: Plan
    error: str | None = None
    pending_reason: str = ""

    @property
    def pending(self) -> tuple[ActionResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.PENDING)

    @property
    def failed(self) -> tuple[ActionResult, ...]:
        return tuple(r for r in self.results if r.outcome is Outcome.FAILED)

    @property
    def exit_code(self) -> int:
        if self.error or self.plan.refused or self.failed:
            return 1
        return 3 if self.pending else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": 1,
            "exit_code": self.exit_code,
            "error": self.error,
            "pending_reason": self.pending_reason or None,
            "results": [r.to_json() for r in self.results],
            "refused": list(self.plan.refused),
            "warnings": list(self.plan.warnings),
        }


ProgressHook = Callable[[Action, str, str], None]  # action, phase ("start"|outcome), detail


#: runs an ``upgrade`` action (``_engine._upgrade.Upgrader``): True when it ran
UpgradeRunner = Callable[[Action, GuestTransport, Callable[[str], None] | None], bool]


class _Run:
    def __init__(
        self,
        client: PveClient,
        root: RootAccess,
        hook: ProgressHook | None,
        upgrader: UpgradeRunner | None = None,
    ) -> None:
        self.upgrader = upgrader
        self.api = ApiExecutor(client)
        self.checker = PreconditionChecker(client, root.transport)
        self.root = root
        self.hook = hook
        self.results: list[ActionResult] = []
        self.blocked: set[str] = set()  # stacks with a pending root step
        self.failed: set[str] = set()  # stacks with a failed step
        self.key_refused = False  # a container refused the stack's SSH key

    def note(self, a: Action, outcome: Outcome, detail: str, t0: float) -> None:
        self.results.append(ActionResult(a, outcome, detail, time.monotonic() - t0))
        if self.hook is not None:
            self.hook(a, outcome.value, detail)

    def relay(self, a: Action) -> Callable[[str], None] | None:
        hook = self.hook
        return None if hook is None else (lambda msg: hook(a, "progress", msg))

    def one(self, a: Action) -> None:
        t0 = time.monotonic()
        if a.stack in self.failed:
            self.note(a, Outcome.PENDING, "an earlier step of this stack failed", t0)
            return
        if a.actor is not Actor.API and self._waits(a, t0):
            return
        if self.hook is not None:
            self.hook(a, "start", "")
        try:
            pre = self.checker.check(a)
            if not pre.run:
                self.note(a, Outcome.SKIPPED, pre.detail, t0)
                return
            ran = self._act(a)
        except GuestKeyRefused as e:  # the root steps authorize the key: pending, not failed
            self.blocked.add(a.stack)
            self.key_refused = True
            self.note(a, Outcome.PENDING, f"{e}\nhint: {e.hint}", t0)
            return
        except PvestackError as e:
            self.failed.add(a.stack)
            self.note(a, Outcome.FAILED, str(e) + (f"\nhint: {e.hint}" if e.hint else ""), t0)
            return
        self.note(a, Outcome.DONE if ran else Outcome.SKIPPED, "" if ran else "already done", t0)

    def _waits(self, a: Action, t0: float) -> bool:
        """Root/guest work that cannot run now: no transport, or root's part is pending."""
        if a.actor is Actor.GUEST and a.stack in self.blocked:
            self.note(a, Outcome.PENDING, "waits for this stack's root steps", t0)
            return True
        if self._transport(a) is None:
            self.blocked.add(a.stack)
            self.note(a, Outcome.PENDING, self.root.reason, t0)
            return True
        return False

    def _transport(self, a: Action) -> RootTransport | GuestTransport | None:
        return self.root.guest_transport if a.actor is Actor.GUEST else self.root.transport

    def _act(self, a: Action) -> bool:
        if a.actor is Actor.API:
            self.api.run(a, on_progress=self.relay(a))
            return True
        transport = self._transport(a)
        assert transport is not None  # _waits saw one
        if a.kind is ActionKind.UPGRADE:
            if self.upgrader is None or self.root.guest_transport is None:
                raise PvestackError(f"{a.id}: an upgrade runs only through `pvestack apply`")
            return self.upgrader(a, self.root.guest_transport, self.relay(a))
        ran = False
        for step in a.steps:
            ran = transport.run_step(step, on_output=self.relay(a)) or ran
        return ran


def apply(
    p: Plan,
    client: PveClient,
    *,
    root: RootAccess,
    on_progress: ProgressHook | None = None,
    upgrader: UpgradeRunner | None = None,
) -> ApplyResult:
    """Run ``p``. Raises ``ReplacementRequired`` before doing anything if it asks for one.
    ``upgrader`` runs the ``upgrade`` actions (snapshot, steps, verify, rollback)."""
    replace = [a for a in p.actions if a.change is Change.REPLACE]
    if replace:
        raise ReplacementRequired(
            "; ".join(f"{a.target}: {a.reason}" for a in replace),
            hint="pvestack never replaces a container by itself",
        )
    run = _Run(client, root, on_progress, upgrader)
    for a in p.actions:
        run.one(a)
    pending = any(r.outcome is Outcome.PENDING for r in run.results)
    reason = ""
    if pending:
        if root.transport is None:
            reason = root.reason
        elif run.key_refused:
            reason = "a container refused the stack's SSH key"
        else:
            reason = "an earlier step failed"
    return ApplyResult(tuple(run.results), p, pending_reason=reason)
