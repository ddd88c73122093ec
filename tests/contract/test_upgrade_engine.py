"""The engine's upgrade (``_engine._upgrade.Upgrader``) on the lab's HTTPS API in process:
real snapshots, rollbacks, prunes and vzdump archives of a lab CT whose rootfs is a
directory here. The guest side is the CT's rootfs: the marker programs run for real on
it (paths moved into the rootfs); the app's "compose up" writes the version it starts
there, and the stand-in verify reads it (red for the broken release). A rollback really
restores the rootfs, so the version, the marker and the data come back from the snapshot.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_lab_daytwo import NODE, Api, _client, api  # noqa: F401  (api: the fixture)

from pvestack._commands import Step, cmd
from pvestack._engine import Upgrader
from pvestack._errors import RollbackFailed, RootStepError, SnapshotUnavailable, UpgradeFailed
from pvestack._guestfacts import ServiceUpgrade, UpgradeMarker
from pvestack._model import (
    Action,
    ActionKind,
    Actor,
    Change,
    Running,
    Target,
    UpgradeSpec,
)
from pvestack._steps import upgrade as upgrade_steps
from pvestack.verify import CheckResult, Status, VerifyReport

pytestmark = pytest.mark.contract

OLD, NEW = "pvestack-lab/hermes-agent:0.18.2-boot2", "pvestack-lab/hermes-agent:0.19.0-boot2"
VMID = 100
T0 = datetime(2026, 12, 2, 7, 0, 0, tzinfo=UTC)


class RootfsGuest:
    """The CT's side of the upgrade, on its rootfs directory (a GuestTransport)."""

    def __init__(self, rootfs: Path, release: str, *, image_loads: bool = True) -> None:
        self.rootfs, self.release, self.image_loads = rootfs, release, image_loads
        self.ran: list[str] = []
        self.verified: list[tuple[str, ...] | None] = []  # the images each verify expected

    def path(self, inside: str) -> Path:
        return self.rootfs / inside.lstrip("/")

    def run_step(self, step: Step, *, on_output: object = None) -> bool:
        self.ran.append(step.id)
        (c,) = step.commands
        if step.id.endswith((":upgrade:marker", ":upgrade:done")):
            argv = list(c.argv[c.argv.index("--") + 1 :])  # sh -c PROGRAM sh ARGS
            args = [str(self.path(a)) if a.startswith("/") else a for a in argv[4:]]
            stdin = c.stdin.reveal().decode() if c.stdin is not None else ""
            subprocess.run(["sh", "-c", argv[2], "sh", *args], input=stdin, check=True, text=True)
        elif ":image:" in step.id and not self.image_loads:
            raise RootStepError("docker load", 1, "open /var/tmp/pvestack-image.tar: no such file")
        elif step.id.endswith(":compose:up"):
            self.path("/opt/app/running").write_text(self.release)
        return True

    def marker(self) -> dict[str, object] | None:
        p = self.path(upgrade_steps.MARKER_PATH)
        return json.loads(p.read_text()) if p.exists() else None


def running(guest: RootfsGuest) -> str:
    return guest.path("/opt/app/running").read_text()


def verify_from(guest: RootfsGuest):  # type: ignore[no-untyped-def]
    def verify(stack: str, images: Sequence[str] | None) -> VerifyReport:
        guest.verified.append(None if images is None else tuple(images))
        version = running(guest)
        ok = version != "broken"
        status = Status.PASS if ok else Status.FAIL
        evidence = f"runs {version}" + ("" if ok else ": exited (1), restarting")
        return VerifyReport((CheckResult(stack, "hermes.state", "Hermes runs", status, evidence),))

    return verify


def action(*, snapshot: bool = True, backup: bool = False, keep: int = 2,
           resume: UpgradeMarker | None = None) -> Action:  # fmt: skip
    u = UpgradeSpec(
        services=(ServiceUpgrade("hermes", OLD, NEW),), snapshot=snapshot,
        blockers=() if snapshot else ("mp0 is a bind mount of the host path /srv/h at /data",),
        backup=backup, backup_storage="local", keep=keep, resume=resume,
    )  # fmt: skip
    steps = (
        Step(f"ct{VMID}:image:{NEW}", f"docker load {NEW}", (cmd("docker", "load"),)),
        Step(f"ct{VMID}:file:/opt/app/compose.yml", "write compose.yml", (cmd("true"),)),
        Step(f"ct{VMID}:compose:up", "compose up -d", (cmd("true"),)),
    )
    return Action(
        id="hermes:upgrade", kind=ActionKind.UPGRADE, change=Change.UPDATE,
        target=Target.lxc(NODE, VMID), actor=Actor.GUEST, reason="", stack="hermes",
        precondition=Running("hermes"), steps=steps, upgrade=u,
    )  # fmt: skip


@pytest.fixture
def ct(api: Api) -> Path:  # noqa: F811
    api.create(VMID, tags="pvestack", description="pvestack-stack: hermes", start=1)
    root = api.rootfs(VMID)
    (root / "opt/app").mkdir(parents=True)
    (root / "opt/app/running").write_text("0.18.2")
    (root / "opt/hermes").mkdir(parents=True)
    (root / "opt/hermes/memories.md").write_text("the user likes tea\n")
    return root


def snapshots(api: Api) -> list[str]:  # noqa: F811
    rows = api.call("GET", f"/nodes/{NODE}/lxc/{VMID}/snapshot")[1]["data"]
    return sorted(r["name"] for r in rows if r["name"] != "current")


def upgrader(api: Api, guest: RootfsGuest, **kw: object) -> Upgrader:  # noqa: F811
    times = iter(T0 + timedelta(minutes=i) for i in range(10, 20))
    return Upgrader(_client(api), verify_from(guest), now=lambda: next(times), docker_wait=5,
                    **kw)  # type: ignore[arg-type]  # fmt: skip


def test_green_upgrade_snapshots_first_prunes_to_keep_and_leaves_no_marker(
    api: Api,  # noqa: F811
    ct: Path,
) -> None:
    for name in ("manual", "pvestack-20261202T060000Z", "pvestack-20261202T063000Z"):
        assert api.task("POST", f"/nodes/{NODE}/lxc/{VMID}/snapshot", {"snapname": name})[0] == "OK"
    guest = RootfsGuest(ct, "0.19.0")
    up = upgrader(api, guest)
    assert up(action(keep=2), guest, None) is True
    (rep,) = up.reports
    assert rep.ok and rep.snapshot == "pvestack-20261202T071000Z" and rep.rolled_back_to is None
    assert rep.pruned == ("pvestack-20261202T060000Z",)
    assert snapshots(api) == ["manual", "pvestack-20261202T063000Z", "pvestack-20261202T071000Z"]
    assert running(guest) == "0.19.0" and guest.marker() is None
    assert guest.ran == [
        f"ct{VMID}:upgrade:marker", f"ct{VMID}:image:{NEW}", f"ct{VMID}:file:/opt/app/compose.yml",
        f"ct{VMID}:compose:up", f"ct{VMID}:upgrade:done",
    ]  # fmt: skip
    # the snapshot holds the state before the upgrade (its description says what moved)
    rows = api.call("GET", f"/nodes/{NODE}/lxc/{VMID}/snapshot")[1]["data"]
    [snap] = [r for r in rows if r["name"] == rep.snapshot]
    assert snap["description"] == f"pvestack upgrade: hermes {OLD} -> {NEW}"


def test_red_upgrade_rolls_back_verifies_again_and_reports_both(
    api: Api,  # noqa: F811
    ct: Path,
) -> None:
    guest = RootfsGuest(ct, "broken")
    up = upgrader(api, guest)
    with pytest.raises(UpgradeFailed) as e:
        up(action(), guest, None)
    assert (
        "verify failed after the upgrade (hermes.state: runs broken: exited (1), restarting)"
        in (e.value.message)
    )
    assert "rolled back to pvestack-20261202T071000Z: verify after the rollback is green" in (
        e.value.message
    )
    (rep,) = up.reports
    assert not rep.ok and rep.rolled_back_to == "pvestack-20261202T071000Z"
    assert rep.verify is not None and not rep.verify.ok
    assert rep.verify_after_rollback is not None and rep.verify_after_rollback.ok
    # the rollback is real: the old release, the data, no marker; the CT started again
    assert running(guest) == "0.18.2" and guest.marker() is None
    assert guest.verified == [None, (OLD,)]  # the pinned images, then the rolled-back ones
    assert (ct / "opt/hermes/memories.md").read_text() == "the user likes tea\n"
    assert api.runtime.state(VMID) == "running"
    assert snapshots(api) == ["pvestack-20261202T071000Z"]  # kept: no prune on red
    assert rep.to_json()["verify_after_rollback"]["ok"] is True


def test_an_image_that_does_not_load_fails_before_anything_restarts(
    api: Api,  # noqa: F811
    ct: Path,
) -> None:
    guest = RootfsGuest(ct, "0.19.0", image_loads=False)
    up = upgrader(api, guest)
    with pytest.raises(UpgradeFailed, match="nothing was restarted; the stack runs its old"):
        up(action(), guest, None)
    assert guest.ran == [f"ct{VMID}:upgrade:marker", f"ct{VMID}:image:{NEW}",
                         f"ct{VMID}:upgrade:done"]  # fmt: skip
    assert running(guest) == "0.18.2" and guest.marker() is None


def test_no_snapshot_possible_refuses_unless_backup_or_no_rollback(
    api: Api,  # noqa: F811
    ct: Path,
) -> None:
    guest = RootfsGuest(ct, "0.19.0")
    up = upgrader(api, guest)
    with pytest.raises(SnapshotUnavailable) as e:
        up(action(snapshot=False), guest, None)
    assert "cannot be snapshotted (PVE: snapshot feature is not available): mp0 is a bind" in (
        e.value.message
    )
    assert "pvestack backup" in (e.value.hint or "")
    assert guest.ran == [] and snapshots(api) == [] and running(guest) == "0.18.2"

    # before_upgrade: a vzdump archive first, listed with the stack in its notes
    assert up(action(snapshot=False, backup=True), guest, None)
    rep = up.reports[-1]
    assert rep.ok and rep.snapshot is None and rep.backup is not None
    assert rep.backup.startswith(f"local:backup/vzdump-lxc-{VMID}-")
    rows = api.call("GET", f"/nodes/{NODE}/storage/local/content", {"content": "backup"})[1]
    assert [r["notes"] for r in rows["data"]] == [f"ct{VMID} pvestack-stack: hermes"]


def test_no_rollback_keeps_the_failed_state_and_the_marker_then_resume_rolls_back(
    api: Api,  # noqa: F811
    ct: Path,
) -> None:
    guest = RootfsGuest(ct, "broken")
    with pytest.raises(UpgradeFailed, match="--no-rollback: the failed state is kept") as e:
        upgrader(api, guest, no_rollback=True)(action(), guest, None)
    assert "pvestack rollback hermes pvestack-20261202T071000Z" in (e.value.hint or "")
    assert running(guest) == "broken"
    marker = guest.marker()
    assert marker is not None and marker["snapshot"] == "pvestack-20261202T071000Z"
    assert marker["from"] == {"hermes": OLD} and marker["to"] == {"hermes": NEW}

    # the next apply resumes: verify is red, so it rolls back to the recorded snapshot
    resume = UpgradeMarker((ServiceUpgrade("hermes", OLD, NEW),), "pvestack-20261202T071000Z",
                           None, "upgrade")  # fmt: skip
    up = upgrader(api, guest)
    with pytest.raises(UpgradeFailed, match="verify after the rollback is green"):
        up(action(resume=resume), guest, None)
    assert running(guest) == "0.18.2" and guest.marker() is None
    assert f"ct{VMID}:upgrade:marker" not in guest.ran[-4:]  # a resume takes no new snapshot
    assert snapshots(api) == ["pvestack-20261202T071000Z"]


def test_a_failed_rollback_says_the_ct_state_and_the_commands(
    api: Api,  # noqa: F811
    ct: Path,
) -> None:
    guest = RootfsGuest(ct, "broken")
    api.node.fail_next_task("vzrollback", "zfs error: cannot rollback")
    up = upgrader(api, guest)
    with pytest.raises(RollbackFailed) as e:
        up(action(), guest, None)
    msg = e.value.message
    assert "rollback of CT 100 to 'pvestack-20261202T071000Z' failed: zfs error" in msg
    assert "the CT is " in msg
    assert f"pct rollback {VMID} pvestack-20261202T071000Z && pct start {VMID}" in msg
    (rep,) = up.reports
    assert rep.error == msg and rep.verify is not None and not rep.verify.ok
