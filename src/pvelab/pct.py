"""``pct`` on the lab node: Proxmox's container tool, as root@pam, on the lab's state.

Syntax as on a PVE node (options as ``-key value`` or ``--key value``)::

    pct set 118 -features keyctl=1,nesting=1 -mp0 /srv/data,mp=/data -delete mp1
    pct config 118 [--current] [--snapshot NAME]
    pct status 118 [--verbose]
    pct start|stop|reboot|shutdown|destroy 118
    pct exec 118 -- systemctl is-system-running
    pct push 118 ./file /etc/file [--perms 0644] [--user root] [--group root]
    pct pull 118 /etc/file ./file [--perms ...] [--user ...] [--group ...]
    pct list

It goes through the same backend (``Node``) as the API server, so both see one state
(file-locked). Errors are printed as PVE's CLI does and exit with 255.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pvelab.backend.auth import ROOT
from pvelab.backend.errors import PveError
from pvelab.backend.node import Node, lab_dir_from_env
from pvelab.runtime.lxc import LxcRuntime

USAGE = """\
USAGE: pct <COMMAND> [ARGS] [OPTIONS]
       pct config <vmid> [--current] [--snapshot <name>]
       pct set <vmid> [-<option> <value>]... [-delete <list>]
       pct status <vmid> [--verbose]
       pct start|stop|reboot|shutdown|destroy <vmid>
       pct exec <vmid> [<extra-args>...]
       pct enter <vmid>
       pct snapshot|rollback|delsnapshot <vmid> <snapname>
       pct listsnapshot <vmid>
       pct restore <vmid> <ostemplate> [--storage <storage>] [--start] [-<option> <value>]...
       pct push <vmid> <file> <destination> [--group] [--perms] [--user]
       pct pull <vmid> <path> <destination> [--group] [--perms] [--user]
       pct list
"""
_FLAGS = frozenset({"current", "verbose", "force", "purge", "start", "forceStop", "unique"})


class UsageError(Exception):
    pass


def node_name(lab_dir: Path) -> str:
    try:
        name = json.loads((lab_dir / "lab.json").read_text()).get("node")
    except (OSError, ValueError):
        name = None
    return str(name or "pve")


def make_node(lab_dir: Path | None = None) -> Node:
    lab = lab_dir or lab_dir_from_env()
    return Node(lab, LxcRuntime(lab), node_name(lab))


def parse_options(args: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """PVE CLI arguments -> (positionals, options); ``-key value`` / ``--key value`` /
    ``--key=value``; boolean flags without a value."""
    pos: list[str] = []
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        a = args[i]
        if a.startswith("-") and len(a) > 1 and not a.lstrip("-")[:1].isdigit():
            key = a.lstrip("-")
            value: str | None = None
            if "=" in key and a.startswith("--"):
                key, value = key.split("=", 1)
            if value is None:
                if key in _FLAGS and (i + 1 >= len(args) or args[i + 1].startswith("-")):
                    value = "1"
                else:
                    if i + 1 >= len(args):
                        raise UsageError(f"option '-{key}' requires a value")
                    i += 1
                    value = args[i]
            if key in opts:
                raise UsageError(f"duplicate option '-{key}'")
            opts[key] = value
        else:
            pos.append(a)
        i += 1
    return pos, opts


def _vmid(pos: Sequence[str], n: int = 1) -> int:
    if len(pos) < n or not pos[0].isdigit():
        raise UsageError("missing or invalid <vmid>")
    return int(pos[0])


def _print_config(cfg: dict[str, Any]) -> None:
    descr = cfg.pop("description", None)
    raw = cfg.pop("lxc", [])
    cfg.pop("digest", None)
    if descr is not None:
        for line in str(descr).rstrip("\n").split("\n"):
            print(f"description: {line}")
    for k in sorted(cfg):
        print(f"{k}: {cfg[k]}")
    for k, v in raw:
        print(f"{k}: {v}")


def _ids(user: str | None, group: str | None) -> tuple[str, str]:
    return user or "root", group or user or "root"


def _runtime(node: Node, vmid: int) -> LxcRuntime:
    rt = node.runtime
    if not isinstance(rt, LxcRuntime):
        raise PveError(500, "this command needs the lab's LXC runtime")
    node.load(vmid)
    if rt.state(vmid) != "running":
        raise PveError(500, f"CT {vmid} not running")
    return rt


def _exec(node: Node, vmid: int, argv: Sequence[str]) -> int:
    rt = _runtime(node, vmid)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise UsageError("missing command")
    sys.stdout.flush()
    sys.stderr.flush()
    return subprocess.run(rt.attach_argv(vmid, argv), check=False).returncode


def _mode(perms: str) -> int:
    return int(perms, 16) if perms.lower().startswith("0x") else int(perms, 8)


def _push(node: Node, vmid: int, src: str, dst: str, opts: dict[str, str]) -> None:
    """Stream ``src`` (any size: image tarballs) into the container as ``dst``."""
    rt = _runtime(node, vmid)
    user, group = _ids(opts.get("user"), opts.get("group"))
    mode = _mode(opts.get("perms", "0644"))
    script = 'umask 077 && cat > "$1" && chown "$2:$3" "$1" && chmod "$4" "$1"'
    argv = rt.attach_argv(vmid, ["sh", "-c", script, "sh", dst, user, group, f"{mode:o}"])
    with open(src, "rb") as f:
        r = subprocess.run(argv, stdin=f, capture_output=True, check=False)
    if r.returncode != 0:
        raise PveError(500, f"failed to push {src}: {r.stderr.decode(errors='replace').strip()}")


def _pull(node: Node, vmid: int, src: str, dst: str, opts: dict[str, str]) -> None:
    """Stream ``src`` out of the container into ``dst`` on the node."""
    rt = _runtime(node, vmid)
    target = Path(dst)
    if target.is_dir():
        target = target / Path(src).name
    part = target.with_name(f".{target.name}.pct-pull")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        r = subprocess.run(
            rt.attach_argv(vmid, ["cat", "--", src]), stdout=f, stderr=subprocess.PIPE, check=False
        )
    if r.returncode != 0:
        part.unlink(missing_ok=True)
        msg = r.stderr.decode(errors="replace").strip()
        raise PveError(500, f"failed to open {src} for reading: {msg}")
    os.chmod(part, _mode(opts.get("perms", "0644")))
    if "user" in opts or "group" in opts:
        user, group = _ids(opts.get("user"), opts.get("group"))
        uid = int(user) if user.isdigit() else pwd.getpwnam(user).pw_uid
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        os.chown(part, uid, gid)
    os.replace(part, target)


def run(argv: Sequence[str], node: Node | None = None) -> int:
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(USAGE, end="")
        return 0
    cmd, rest = argv[0], list(argv[1:])
    if cmd in ("exec", "enter"):
        node = node or make_node()
        command = rest[1:] if cmd == "exec" else ["/bin/bash", "-l"]
        return _exec(node, _vmid(rest[:1]), command)
    pos, opts = parse_options(rest)
    node = node or make_node()
    if cmd == "list":
        print(f"{'VMID':<10} {'Status':<10} {'Lock':<9} {'Name'}")
        for vmid in node.vmids():
            st = node.status(vmid)
            print(f"{vmid:<10} {st['status']:<10} {st.get('lock', ''):<9} {st['name']}")
        return 0
    vmid = _vmid(pos)
    if cmd == "config":
        snapshot = opts.get("snapshot")
        cfg = node.get_config(vmid, current=opts.get("current") == "1", snapshot=snapshot)
        _print_config(cfg)
    elif cmd == "set":
        delete = [d for d in opts.pop("delete", "").replace(";", ",").split(",") if d]
        digest = opts.pop("digest", None)
        node.set_config(vmid, opts, delete, user=ROOT, digest=digest)
    elif cmd == "status":
        st = node.status(vmid)
        if opts.get("verbose") == "1":
            for k in sorted(st):
                print(f"{k}: {st[k]}")
        else:
            print(f"status: {st['status']}")
    elif cmd in ("start", "stop", "reboot", "shutdown", "destroy"):
        if cmd == "start":
            upid = node.start(vmid, user=ROOT)
        elif cmd == "stop":
            upid = node.stop(vmid, user=ROOT)
        elif cmd == "reboot":
            upid = node.reboot(vmid, user=ROOT, timeout=int(opts.get("timeout", "60")))
        elif cmd == "shutdown":
            upid = node.shutdown(
                vmid,
                user=ROOT,
                timeout=int(opts.get("timeout", "60")),
                force=opts.get("forceStop") == "1",
            )
        else:
            upid = node.destroy(
                vmid, user=ROOT, force=opts.get("force") == "1", purge=opts.get("purge") == "1"
            )
        node.wait(upid)
    elif cmd in ("snapshot", "rollback", "delsnapshot"):
        if len(pos) != 2:
            raise UsageError(f"usage: pct {cmd} <vmid> <snapname>")
        if cmd == "snapshot":
            upid = node.snapshot(vmid, pos[1], user=ROOT, description=opts.get("description"))
        elif cmd == "rollback":
            upid = node.rollback(vmid, pos[1], user=ROOT, start=opts.get("start") == "1")
        else:
            upid = node.delete_snapshot(vmid, pos[1], user=ROOT)
        node.wait(upid)
    elif cmd == "restore":  # a backup archive (volid or path) into a new CT
        if len(pos) != 2:
            raise UsageError("usage: pct restore <vmid> <ostemplate> [OPTIONS]")
        node.wait(node.create({"vmid": vmid, "ostemplate": pos[1], "restore": 1, **opts}))
    elif cmd == "listsnapshot":
        for snap in node.snapshot_list(vmid):
            print(f"{snap.get('name', '')} {snap.get('description', '')}".rstrip())
    elif cmd == "push":
        if len(pos) != 3:
            raise UsageError("usage: pct push <vmid> <file> <destination>")
        _push(node, vmid, pos[1], pos[2], opts)
    elif cmd == "pull":
        if len(pos) != 3:
            raise UsageError("usage: pct pull <vmid> <path> <destination>")
        _pull(node, vmid, pos[1], pos[2], opts)
    else:
        raise UsageError(f"unknown command 'pct {cmd}'")
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = run(args)
    except UsageError as e:
        print(f"400 {e}\n{USAGE}", end="", file=sys.stderr)
        code = 255
    except PveError as e:
        first = e.message.rstrip("\n")
        lines = [f"{e.status} {first}" if e.status == 400 else first]
        lines += [f"{k}: {v}" for k, v in sorted(e.errors.items())]
        print("\n".join(lines), file=sys.stderr)
        code = 255
    except (OSError, ValueError, RuntimeError) as e:
        print(str(e), file=sys.stderr)
        code = 255
    sys.exit(code)


def wrapper_script(python: str, lab_dir: Path) -> str:
    """The ``<lab>/bin/pct`` wrapper ``lab up`` installs (on the SSH session's PATH)."""
    return (
        "#!/bin/sh\n"
        f"PVESTACK_LAB_DIR={shlex.quote(str(lab_dir))}\n"
        "export PVESTACK_LAB_DIR\n"
        f'exec {shlex.quote(python)} -m pvelab.pct "$@"\n'
    )


if __name__ == "__main__":
    main()
