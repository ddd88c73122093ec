import importlib
import inspect
import pkgutil

import pvestack
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


def test_every_exception_is_in_the_one_tree_and_public() -> None:
    found: set[type] = set()
    for info in pkgutil.walk_packages(pvestack.__path__, "pvestack."):
        if info.name == "pvestack.cli":
            continue
        mod = importlib.import_module(info.name)
        for _name, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("pvestack"):
                found.add(obj)
    assert found, "no exception classes found"
    for cls in found:
        assert issubclass(cls, pvestack.PvestackError), cls
        assert getattr(pvestack, cls.__name__, None) is cls, f"{cls.__name__} not exported"
