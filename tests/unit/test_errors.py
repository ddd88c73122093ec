from pvestack import PveTaskError


def test_task_error_carries_the_cause_from_the_task_log() -> None:
    e = PveTaskError(
        "UPID:n:1:2:3:vzstart:118:u:",
        "startup for container '118' failed",
        log_tail=(
            "bridge 'intra01' does not exist",
            "TASK ERROR: startup for container '118' failed",
        ),
    )
    text = str(e)
    assert "startup for container '118' failed" in text
    assert "task log: bridge 'intra01' does not exist" in text
    assert e.status == 500
