"""Worker tasks as PVE has them: a UPID, running -> stopped, ``exitstatus`` and a log.

A task is ``<lab>/tasks/<UPID>.log`` (the log lines) and, once it ends,
``<lab>/tasks/<UPID>.status`` (JSON ``{"exitstatus": ..., "endtime": ...}``). The work runs
in a thread of the process that started it; a task whose process is gone without a status
file reads as stopped with ``unexpected status`` (as PVE reports a dead worker).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvelab.backend.errors import PveError, param_error

_UPID = re.compile(
    r"^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-F]{8}):([0-9A-F]{8,9}):"
    r"([0-9A-F]{8}):([^:\s]+):([^:\s]*):([^:\s]+):$"
)


@dataclass(frozen=True)
class Upid:
    node: str
    pid: int
    pstart: int
    starttime: int
    type: str
    id: str
    user: str

    def __str__(self) -> str:
        return (
            f"UPID:{self.node}:{self.pid:08X}:{self.pstart:08X}:{self.starttime:08X}:"
            f"{self.type}:{self.id}:{self.user}:"
        )

    @classmethod
    def parse(cls, text: str) -> Upid:
        m = _UPID.match(text)
        if not m:
            raise param_error({"upid": "unable to parse worker upid"})
        return cls(
            m.group(1), int(m.group(3), 16), int(m.group(4), 16), int(m.group(5), 16),
            m.group(6), m.group(7), m.group(8),
        )  # fmt: skip


class TaskLog:
    """What a running task writes: lines, and warnings (``WARNINGS: n`` at the end)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.warnings = 0
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock, self.path.open("a") as f:
            for part in line.rstrip("\n").split("\n"):
                f.write(part + "\n")

    def warn(self, line: str) -> None:
        self.warnings += 1
        self.write("WARN: " + line)


TaskBody = Callable[[TaskLog], None]


def _pstart() -> int:
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return 0


def _alive(pid: int, pstart: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) == pstart
    except (OSError, IndexError, ValueError):
        return False


class TaskStore:
    def __init__(self, root: Path, node: str) -> None:
        self.root = root
        self.node = node
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}

    def _log_path(self, upid: str) -> Path:
        return self.root / f"{upid}.log"

    def _status_path(self, upid: str) -> Path:
        return self.root / f"{upid}.status"

    def start(self, ttype: str, tid: str, user: str, body: TaskBody) -> str:
        """Start ``body`` in a worker thread; return the UPID at once."""
        self.root.mkdir(parents=True, exist_ok=True)
        tid = re.sub(r"[:/\s]", "_", tid)
        with self._lock:
            now = int(time.time())
            while True:
                upid = str(Upid(self.node, os.getpid(), _pstart(), now, ttype, tid, user))
                try:
                    fd = os.open(self._log_path(upid), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    now += 1
                    continue
                os.close(fd)
                break
        log = TaskLog(self._log_path(upid))

        def run() -> None:
            status = "OK"
            try:
                body(log)
                if log.warnings:
                    status = f"WARNINGS: {log.warnings}"
            except PveError as e:
                status = e.message.rstrip("\n")
            except Exception as e:
                status = str(e).rstrip("\n") or type(e).__name__
            if status == "OK":
                log.write("TASK OK")
            elif status.startswith("WARNINGS"):
                log.write(f"TASK {status}")
            else:
                log.write(f"TASK ERROR: {status}")
            tmp = self._status_path(upid).with_suffix(".tmp")
            tmp.write_text(json.dumps({"exitstatus": status, "endtime": int(time.time())}))
            tmp.replace(self._status_path(upid))

        thread = threading.Thread(target=run, name=f"task-{ttype}-{tid}", daemon=True)
        self._threads[upid] = thread
        thread.start()
        return upid

    def wait(self, upid: str, timeout: float | None = None) -> str:
        """Wait for a task of this process (or poll another's); return its exitstatus."""
        thread = self._threads.get(upid)
        if thread is not None:
            thread.join(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(upid)
            if st["status"] == "stopped":
                return str(st["exitstatus"])
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"task {upid} still running")
            time.sleep(0.1)

    def exists(self, upid: str) -> bool:
        return self._log_path(upid).exists()

    def status(self, upid: str) -> dict[str, Any]:
        u = Upid.parse(upid)
        if not self.exists(upid):
            raise param_error({"upid": "no such task"})
        out: dict[str, Any] = {
            "upid": upid, "node": u.node, "pid": u.pid, "pstart": u.pstart,
            "starttime": u.starttime, "type": u.type, "id": u.id, "user": u.user,
        }  # fmt: skip
        if "!" in u.user:
            out["tokenid"] = u.user.partition("!")[2]
        try:
            st = json.loads(self._status_path(upid).read_text())
            out.update(status="stopped", exitstatus=st["exitstatus"], endtime=st["endtime"])
        except FileNotFoundError:
            running = upid in self._threads or _alive(u.pid, u.pstart)
            if running:
                out["status"] = "running"
            else:
                out.update(status="stopped", exitstatus="unexpected status")
        return out

    def log(self, upid: str, start: int = 0, limit: int = 50) -> tuple[list[dict[str, Any]], int]:
        """Lines ``[{n, t}]`` counted from 1, and the total."""
        try:
            lines = self._log_path(upid).read_text().splitlines()
        except FileNotFoundError:
            lines = ["unable to open file - No such file or directory"]
        chosen = lines[start : start + limit] if limit else lines[start:]
        return [{"n": start + i + 1, "t": t} for i, t in enumerate(chosen)], len(lines)

    def all(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.root.is_dir():
            return out
        for path in self.root.glob("UPID:*.log"):
            upid = path.name[: -len(".log")]
            try:
                out.append(self.status(upid))
            except PveError:
                continue
        out.sort(key=lambda t: (t["starttime"], t["upid"]), reverse=True)
        return out
