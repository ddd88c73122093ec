"""Issue 10's suite that stays: the fault matrix and the kill points (see faultkit).

``make test`` runs a deterministic sample (a few minutes); ``make stress``
(``PVESTACK_STRESS=1``) the whole matrix. Counts (tried / passed) are printed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from faultkit import Call, Node, Outcome, discover, run_fault, run_kill, run_task_fault

from pvelab.control import Lab

pytestmark = pytest.mark.lab

STRESS = os.environ.get("PVESTACK_STRESS") == "1"
SAMPLE_FAULTS = 3  # scenarios of the fault matrix in make test
SAMPLE_KILLS = 2


def sample(items: list[tuple[Call, str]], n: int) -> list[tuple[Call, str]]:
    """Every k-th item, the same ones on every run (deterministic)."""
    if STRESS or len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def report(
    capsys: pytest.CaptureFixture[str], title: str, results: list[tuple[str, Outcome]]
) -> None:
    """The counts on the terminal, whatever pytest captures."""
    passed = sum(1 for _, o in results if o.ok)
    lines = [f"{title}: tried {len(results)}, passed {passed}"]
    lines += [f"  {'ok  ' if o.ok else 'FAIL'} {name}: {o.why}" for name, o in results]
    with capsys.disabled():
        print("\n" + "\n".join(lines))


@pytest.fixture(scope="module")
def node(lab: Lab, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Node:
    stack = tmp_path_factory.mktemp("faults") / "faulty.toml"
    return Node(env, lab.dir, stack)


@pytest.fixture(scope="module")
def calls(node: Node, env: dict[str, str]) -> Iterator[list[Call]]:
    found = discover(env, node.stack_file, node)
    yield found
    node.clear()
    node.settle()
    if node.ct_state() != "absent":
        node.cli("destroy", "-y")


def test_fault_matrix(node: Node, calls: list[Call], capsys: pytest.CaptureFixture[str]) -> None:
    matrix = [(c, kind) for c in calls for kind in ("500", "hang")]
    chosen = sample(matrix, SAMPLE_FAULTS)
    results: list[tuple[str, Outcome]] = []
    for call, kind in chosen:
        results.append((f"{kind} on {call}", run_fault(node, call, kind)))
    report(capsys, f"fault matrix ({'all' if STRESS else 'sample'} of {len(matrix)})", results)
    assert all(o.ok for _, o in results), [n for n, o in results if not o.ok]


def test_kill_points(node: Node, calls: list[Call], capsys: pytest.CaptureFixture[str]) -> None:
    # a kill point is a write (a step boundary: the call that starts the next step) or the
    # poll of a running task (inside the create task)
    points = [(c, "kill") for c in calls if c.method != "GET" or "/tasks/" in c.path]
    points = [p for p in points if p[0].phase != "noop"]
    chosen = sample(points, SAMPLE_KILLS)
    results = [(f"SIGKILL during {c}", run_kill(node, c)) for c, _ in chosen]
    report(capsys, f"kill points ({'all' if STRESS else 'sample'} of {len(points)})", results)
    assert all(o.ok for _, o in results), [n for n, o in results if not o.ok]


def test_failed_tasks_leave_no_unmarked_ct(
    node: Node, calls: list[Call], capsys: pytest.CaptureFixture[str]
) -> None:
    tasks = ("vzcreate", "vzstart") if STRESS else ("vzcreate",)
    results = [(f"{t} task fails", run_task_fault(node, t)) for t in tasks]
    report(capsys, "failed tasks", results)
    assert all(o.ok for _, o in results), [n for n, o in results if not o.ok]


def test_discovered_calls_cover_each_phase(calls: list[Call]) -> None:
    phases = {c.phase for c in calls}
    assert phases == {"create", "noop", "destroy"}, calls
    assert any(c.method == "POST" and c.path.endswith("/lxc$") for c in calls)
