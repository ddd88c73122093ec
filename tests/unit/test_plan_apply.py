"""The engine runs root/guest actions through a RootTransport: here a real local one
(commands run on this machine in a temp dir), so guards, failures and the pending
logic are exercised for real."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pvestack._commands import Command, Payload, Secret, Step, cmd, mask
from pvestack._engine import Outcome, RootAccess, apply
from pvestack._errors import RootStepError
from pvestack._model import (
    Action,
    ActionKind,
    Actor,
    Change,
    HostDirState,
    Plan,
    Target,
    TargetKind,
)
from pvestack.executors._base import CommandOutput


class LocalTransport:
    """Runs steps on this machine (what the SSH executor does on the node)."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.closed = False

    def _run(self, c: Command) -> subprocess.CompletedProcess[bytes]:
        data = c.stdin.reveal() if c.stdin is not None else None
        return subprocess.run(c.argv, input=data, capture_output=True, check=False)

    def run_step(self, step: Step, *, on_output: Callable[[str], None] | None = None) -> bool:
        if step.guard is not None and self._run(step.guard).returncode == 0:
            return False
        for c in step.commands:
            self.ran.append(c.line)
            r = self._run(c)
            if on_output is not None:
                for line in r.stdout.decode().splitlines():
                    on_output(line)
            if r.returncode != 0:
                secrets = c.stdin.secrets if c.stdin else ()
                raise RootStepError(c.line, r.returncode, mask(r.stderr.decode(), secrets))
        return True

    def capture(self, command: Command) -> CommandOutput:
        r = self._run(command)
        return CommandOutput(r.returncode, r.stdout.decode(), r.stderr.decode())

    def close(self) -> None:
        self.closed = True


def root_action(aid: str, *steps: Step, stack: str = "s", actor: Actor = Actor.ROOT) -> Action:
    return Action(
        id=aid,
        kind=ActionKind.HOST_DIR,
        change=Change.CREATE,
        target=Target(TargetKind.HOST_PATH, "node", None, "/tmp"),
        actor=actor,
        reason="test",
        stack=stack,
        steps=steps,
        precondition=HostDirState("/tmp"),
    )


def mkdir_step(d: Path) -> Step:
    return Step(
        id=f"dir:{d.name}",
        description=f"create {d}",
        commands=(cmd("mkdir", "-p", str(d)),),
        guard=cmd("test", "-d", str(d)),
    )


def test_root_steps_run_and_rerun_is_a_no_op(tmp_path: Path) -> None:
    d = tmp_path / "data"
    f = tmp_path / "data" / "secret.env"
    write = Step(
        id="env",
        description="write .env",
        commands=(
            cmd(
                "sh",
                "-c",
                'cat > "$1"',
                "sh",
                str(f),
                stdin=Payload(("KEY=", Secret("k", "v4lue"), "\n")),
            ),
        ),
        guard=cmd("test", "-s", str(f)),
    )
    p = Plan(
        actions=(
            root_action("s:dir", mkdir_step(d)),
            root_action("s:env", write, actor=Actor.GUEST),
        )
    )
    t = LocalTransport()
    events: list[tuple[str, str]] = []
    res = apply(
        p, None, root=RootAccess(t), on_progress=lambda a, ph, _d: events.append((a.id, ph))
    )  # type: ignore[arg-type]
    assert [r.outcome for r in res.results] == [Outcome.DONE, Outcome.DONE]
    assert f.read_text() == "KEY=v4lue\n"
    assert res.exit_code == 0
    assert ("s:dir", "start") in events and ("s:env", "done") in events
    assert all("v4lue" not in line for line in t.ran)
    res = apply(p, None, root=RootAccess(t))  # type: ignore[arg-type]
    assert [r.outcome for r in res.results] == [Outcome.SKIPPED, Outcome.SKIPPED]


def test_without_transport_root_is_pending_and_guest_waits(tmp_path: Path) -> None:
    p = Plan(
        actions=(
            root_action("s:dir", mkdir_step(tmp_path / "x")),
            root_action("s:app", mkdir_step(tmp_path / "y"), actor=Actor.GUEST),
        )
    )
    res = apply(p, None, root=RootAccess(None, 'root.via = "console": paste the script'))  # type: ignore[arg-type]
    assert [r.outcome for r in res.results] == [Outcome.PENDING, Outcome.PENDING]
    assert res.results[0].detail == 'root.via = "console": paste the script'
    assert res.results[1].detail == "waits for this stack's root steps"
    assert res.exit_code == 3 and res.pending_reason.startswith("root.via")
    assert not (tmp_path / "x").exists()


def test_failure_stops_the_stack_and_is_masked(tmp_path: Path) -> None:
    bad = Step(
        id="bad",
        description="fails",
        commands=(
            cmd("sh", "-c", "cat >&2; exit 7", stdin=Payload(("token ", Secret("t", "hunter2")))),
        ),
    )
    p = Plan(
        actions=(
            root_action("s:bad", bad),
            root_action("s:after", mkdir_step(tmp_path / "after")),
            root_action("other:ok", mkdir_step(tmp_path / "other"), stack="other"),
        )
    )
    res = apply(p, None, root=RootAccess(LocalTransport()))  # type: ignore[arg-type]
    outcomes: dict[str, Any] = {r.action.id: r for r in res.results}
    assert outcomes["s:bad"].outcome is Outcome.FAILED
    assert "exit 7" in outcomes["s:bad"].detail
    assert "hunter2" not in outcomes["s:bad"].detail and "***" in outcomes["s:bad"].detail
    assert outcomes["s:after"].outcome is Outcome.PENDING
    assert outcomes["other:ok"].outcome is Outcome.DONE
    assert res.exit_code == 1
    # pending because of the failure, and it says so (no bare "pending:" line)
    assert res.pending_reason == "an earlier step failed"
    assert not (tmp_path / "after").exists() and (tmp_path / "other").is_dir()


# ---------------------------------------------------------------- HostDirState, re-checked


def host_dir_action(path: Path, state: HostDirState) -> Action:
    return Action(
        id="s:host:mp0",
        kind=ActionKind.HOST_DIR,
        change=Change.CREATE,
        target=Target(TargetKind.HOST_PATH, "node", 118, str(path)),
        actor=Actor.ROOT,
        reason="test",
        stack="s",
        steps=(mkdir_step(path),),
        precondition=state,
    )


def test_host_dir_refused_when_a_component_became_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "mnt").symlink_to(real)
    path = tmp_path / "mnt" / "data"
    t = LocalTransport()
    res = apply(
        Plan(actions=(host_dir_action(path, HostDirState(str(path), exists=False)),)),
        None,  # type: ignore[arg-type]
        root=RootAccess(t),
    )
    r = res.results[0]
    assert r.outcome is Outcome.FAILED
    assert f"{tmp_path / 'mnt'} is a symbolic link" in r.detail
    assert t.ran == [] and list(real.iterdir()) == []
    assert res.exit_code == 1


def test_host_dir_refused_when_it_appeared_or_changed_owner(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.mkdir()
    st = path.stat()
    t = LocalTransport()
    for state, text in (
        (HostDirState(str(path), exists=False), "exists now"),
        (HostDirState(str(path), True, st.st_uid + 1, st.st_gid), "the plan saw"),
    ):
        res = apply(Plan(actions=(host_dir_action(path, state),)), None, root=RootAccess(t))  # type: ignore[arg-type]
        assert res.results[0].outcome is Outcome.FAILED and text in res.results[0].detail
    assert t.ran == []
    # as planned: it runs (the guard sees the directory: already done)
    res = apply(
        Plan(actions=(host_dir_action(path, HostDirState(str(path), True, st.st_uid, st.st_gid)),)),
        None,  # type: ignore[arg-type]
        root=RootAccess(t),
    )
    assert res.results[0].outcome is Outcome.SKIPPED


def test_host_dir_refused_when_a_file_replaced_it(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_text("x")
    res = apply(
        Plan(
            actions=(
                host_dir_action(
                    path,
                    HostDirState(str(path)),
                ),
            )
        ),
        None,  # type: ignore[arg-type]
        root=RootAccess(LocalTransport()),
    )
    assert "is not a directory" in res.results[0].detail


def test_guest_actions_go_through_the_guest_transport(tmp_path: Path) -> None:
    """The seam for a transport that reaches the guest directly: the engine sends guest
    steps to ``RootAccess.guest`` when set, root steps to the root transport."""
    root_t, guest_t = LocalTransport(), LocalTransport()
    p = Plan(
        actions=(
            root_action("s:dir", mkdir_step(tmp_path / "r")),
            root_action("s:app", mkdir_step(tmp_path / "g"), actor=Actor.GUEST),
        )
    )
    res = apply(p, None, root=RootAccess(root_t, guest=guest_t))  # type: ignore[arg-type]
    assert [r.outcome for r in res.results] == [Outcome.DONE, Outcome.DONE]
    assert root_t.ran == [f"mkdir -p {tmp_path / 'r'}"]
    assert guest_t.ran == [f"mkdir -p {tmp_path / 'g'}"]
    # without one, the root transport carries them (pct exec/push)
    assert RootAccess(root_t).guest_transport is root_t
