"""Run an ``upgrade`` action (``_plan._upgrade``): the safety net first, then the new
images, files and compose up, then verify; on red, roll back and verify again.

In order (DEVELOPERS.md, "Upgrades as a plan action"):

1. the safety net: a ``pvestack-<UTC>`` snapshot when PVE can take one; a vzdump backup
   when ``[stack.backup] before_upgrade`` (or ``--backup``); with neither possible the
   upgrade is refused with ``SnapshotUnavailable``'s message unless ``--no-rollback``;
2. the marker ``/var/lib/pvestack/upgrade.json`` (after the snapshot, so a rollback
   removes it too): an interrupted run shows as ``upgrade (resume)`` in the next plan;
3. the steps: images first (a missing or unloadable image fails here: nothing restarted,
   the marker goes), then the files, then ``compose up -d`` (recreates what changed);
4. verify the stack. Green: prune pvestack's snapshots to ``keep``, remove the marker.
   Red: roll back to the snapshot (``start=1``), wait for Docker, verify again, report
   both, fail the action (exit 1). ``--no-rollback`` keeps the failed state and the
   marker (the next plan says so).

A resumed upgrade (the marker was found) runs the steps (each skips what is done) and
verifies: green finishes, red rolls back to the recorded snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from pvestack import _daytwo as daytwo
from pvestack._client import PveClient
from pvestack._errors import PvestackError, RootStepError, SnapshotUnavailable, UpgradeFailed
from pvestack._guestfacts import UpgradeMarker
from pvestack._model import Action, UpgradeSpec
from pvestack._steps.upgrade import clear_marker_step, docker_up_step, write_marker_step
from pvestack.executors import GuestTransport
from pvestack.verify import VerifyReport

#: (stack name, the images it runs instead of the pinned ones or None) -> its checks
VerifyStack = Callable[[str, Sequence[str] | None], VerifyReport]
Say = Callable[[str], None]
DOCKER_WAIT = 180.0  # seconds for Docker to answer after a rollback's start


@dataclass(frozen=True)
class UpgradeReport:
    """What one upgrade did; both verify results when it rolled back."""

    stack: str
    vmid: int
    spec: UpgradeSpec
    snapshot: str | None = None
    backup: str | None = None
    verify: VerifyReport | None = None  # after the upgrade
    rolled_back_to: str | None = None
    verify_after_rollback: VerifyReport | None = None
    pruned: tuple[str, ...] = ()
    kept_failed: bool = False  # --no-rollback: the failed state stays for debugging
    error: str = ""
    hint: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.verify is not None and self.verify.ok

    def to_json(self) -> dict[str, Any]:
        def rep(r: VerifyReport | None) -> dict[str, Any] | None:
            return None if r is None else r.to_json()

        return {
            "stack": self.stack, "vmid": self.vmid, "ok": self.ok, **self.spec.to_json(),
            "snapshot_taken": self.snapshot, "backup_taken": self.backup,
            "verify": rep(self.verify), "rolled_back_to": self.rolled_back_to,
            "verify_after_rollback": rep(self.verify_after_rollback),
            "pruned": list(self.pruned), "kept_failed": self.kept_failed,
            "error": self.error or None,
        }  # fmt: skip


@dataclass
class Upgrader:
    """Runs ``upgrade`` actions for the apply loop; ``reports`` holds what each did."""

    client: PveClient
    verify_stack: VerifyStack
    no_rollback: bool = False
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    docker_wait: float = DOCKER_WAIT
    reports: list[UpgradeReport] = field(default_factory=list)
    _cur: UpgradeReport | None = field(default=None, init=False, repr=False)

    def _note(self, rep: UpgradeReport) -> UpgradeReport:
        self._cur = rep  # what is known so far, for the report of an error
        return rep

    def __call__(self, a: Action, transport: GuestTransport, say: Say | None) -> bool:
        """Run ``a``; raises ``UpgradeFailed`` (or the error that stopped it) unless green."""
        u = a.upgrade
        assert u is not None and a.target.vmid is not None  # kind upgrade carries both
        guest = daytwo.Guest(a.stack, a.target.node, a.target.vmid)
        self._note(UpgradeReport(a.stack, guest.vmid, u))
        try:
            rep = self._run(a, u, guest, transport, say or (lambda _m: None))
        except PvestackError as e:
            assert self._cur is not None
            self.reports.append(replace(self._cur, error=str(e)))
            raise
        self.reports.append(rep)
        if rep.error:
            raise UpgradeFailed(rep.error, hint=rep.hint or None)
        return True

    # ------------------------------------------------------------------ phases

    def _run(
        self,
        a: Action,
        u: UpgradeSpec,
        guest: daytwo.Guest,
        transport: GuestTransport,
        say: Say,
    ) -> UpgradeReport:
        assert self._cur is not None
        rep = self._cur
        if u.resume is not None:
            rep = self._note(replace(rep, snapshot=u.resume.snapshot, backup=u.resume.backup))
            say(f"resuming an interrupted upgrade (phase {u.resume.phase})")
        else:
            rep = self._safety_net(u, guest, say, rep)
            marker = UpgradeMarker(u.services, rep.snapshot, rep.backup, "upgrade")
            transport.run_step(write_marker_step(guest.vmid, a.stack, marker))
        self._steps(a, transport, guest)
        say("verify after the upgrade")
        rep = self._note(replace(rep, verify=self.verify_stack(a.stack, None)))
        assert rep.verify is not None
        if rep.verify.ok:
            return self._finish(u, guest, transport, rep)
        return self._red(a, guest, transport, say, rep)

    def _safety_net(
        self, u: UpgradeSpec, guest: daytwo.Guest, say: Say, rep: UpgradeReport
    ) -> UpgradeReport:
        if not u.snapshot and not u.backup and not self.no_rollback:
            raise SnapshotUnavailable(guest.vmid, u.blockers)
        if u.backup:
            say(f"vzdump backup to {u.backup_storage}")
            b = daytwo.backup(self.client, guest, storage=u.backup_storage)
            rep = self._note(replace(rep, backup=b.backup.volid))
        if u.snapshot:
            moves = ", ".join(f"{s.service} {s.from_image} -> {s.to_image}" for s in u.services)
            snap = daytwo.take_snapshot(
                self.client, guest, now=self.now(), description=f"pvestack upgrade: {moves}"
            )
            say(f"snapshot {snap.name}")
            rep = self._note(replace(rep, snapshot=snap.name))
        return rep

    def _steps(self, a: Action, transport: GuestTransport, guest: daytwo.Guest) -> None:
        """Images first: a failure there restarted nothing (the marker goes)."""
        for step in a.steps:
            try:
                transport.run_step(step)
            except RootStepError as e:
                if ":image:" not in step.id:
                    raise UpgradeFailed(
                        f"{a.stack}: upgrade step {step.id} failed: {e}",
                        hint="the next `pvestack apply` resumes the upgrade (verify, then "
                        "finish or roll back); `pvestack rollback` rolls back by hand",
                    ) from e
                transport.run_step(clear_marker_step(guest.vmid))
                raise UpgradeFailed(
                    f"{a.stack}: the new image did not load ({step.description}): {e}\n"
                    "nothing was restarted; the stack runs its old version",
                    hint="check the image reference and tarball in the stack file",
                ) from e

    def _finish(
        self, u: UpgradeSpec, guest: daytwo.Guest, transport: GuestTransport, rep: UpgradeReport
    ) -> UpgradeReport:
        pruned: tuple[str, ...] = ()
        if rep.snapshot is not None:
            pruned = daytwo.prune(self.client, guest, u.keep).deleted
        transport.run_step(clear_marker_step(guest.vmid))
        return replace(rep, pruned=pruned)

    def _red(
        self,
        a: Action,
        guest: daytwo.Guest,
        transport: GuestTransport,
        say: Say,
        rep: UpgradeReport,
    ) -> UpgradeReport:
        """Verify failed: roll back (or keep it with --no-rollback); the report's error says
        what happened and carries both verify results."""
        assert rep.verify is not None
        failed = "; ".join(f"{r.id}: {r.evidence}" for r in rep.verify.failed()) or "unverified"
        head = f"{a.stack}: verify failed after the upgrade ({failed})"
        if self.no_rollback:
            return replace(
                rep,
                kept_failed=True,
                error=f"{head}; --no-rollback: the failed state is kept for debugging (the "
                "next plan shows `upgrade (resume)`)",
                hint=f"roll back by hand: `pvestack rollback {a.stack} {rep.snapshot}`"
                if rep.snapshot
                else "restore the backup with PVE's `pct restore`",
            )
        if rep.snapshot is None:
            return replace(
                rep,
                error=f"{head}; there is no snapshot to roll back to",
                hint=f"restore the backup {rep.backup} with PVE's `pct restore`"
                if rep.backup
                else "",
            )
        say(f"verify failed: rolling back to {rep.snapshot}")
        daytwo.rollback(self.client, guest, rep.snapshot, start=True)  # RollbackFailed says how
        rep = self._note(replace(rep, rolled_back_to=rep.snapshot))
        self._wait_docker(transport, guest)
        say("verify after the rollback")
        # the CT runs what the snapshot holds: the images the upgrade came from
        old = tuple(dict.fromkeys(s.from_image for s in rep.spec.services))
        second = self.verify_stack(a.stack, old)
        state = "green" if second.ok else "NOT green"
        return replace(
            rep,
            verify_after_rollback=second,
            error=f"{head}; rolled back to {rep.snapshot}: verify after the rollback is {state}",
        )

    def _wait_docker(self, transport: GuestTransport, guest: daytwo.Guest) -> None:
        deadline = time.monotonic() + self.docker_wait
        while True:
            try:
                transport.run_step(docker_up_step(guest.vmid))
                return
            except PvestackError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(2)
