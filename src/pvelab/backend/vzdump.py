"""vzdump (``POST /nodes/{node}/vzdump``) and restore (``POST /nodes/{node}/lxc`` with
``restore=1``, ``pct restore``) for containers, as pve-manager's PVE::VZDump,
pve-container's PVE::VZDump::LXC and PVE::LXC::Create do them.

The archive is ``<storage>/dump/vzdump-lxc-<vmid>-<YYYY_MM_DD-HH_MM_SS>.tar[.zst|.gz]``:
``./etc/vzdump/pct.conf`` first (the config without lock, snapshots, parent, pending),
then the rootfs and every mount point a backup includes (rootfs, volume mount points with
``backup=1``), with the owners as the container sees them (an unprivileged CT's host uid
100000 is 0 in the archive, as PVE's tar in the user namespace writes it). Bind and device
mount points are excluded (``not a volume``), as PVE does. ``notes-template`` becomes
``<archive>.notes``; the task log is also ``<archive-base>.log``.

Modes: ``snapshot`` takes the internal ``vzdump`` snapshot and archives its copies; a
volume on a storage that cannot snapshot makes it ``mode failure - some volumes do not
support snapshots`` and PVE's fallback ``trying 'suspend' mode instead``. ``suspend``
archives the live files (the lab does not freeze the CT), ``stop`` shuts a running CT down
for the backup and starts it again.
"""

from __future__ import annotations

import contextlib
import io
import re
import secrets
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pvelab.backend import conf as confmod
from pvelab.backend import snapshots
from pvelab.backend.conf import CtConf, Section
from pvelab.backend.errors import PveError, param_error, permission_denied
from pvelab.backend.perms import check_backup_volume_access, check_vzdump_perm, mount_volume
from pvelab.backend.schema import is_true, method_schema, validate
from pvelab.backend.tasks import TaskLog

if TYPE_CHECKING:
    from pvelab.backend.auth import Identity
    from pvelab.backend.guests import Guests

_COMPRESS = {
    "0": ("", None),
    "gzip": (".gz", ["gzip", "-c"]),
    "zstd": (".zst", ["zstd", "-q", "-c"]),
}
_NOTES_VAR = re.compile(r"\{\{([^\s{}]+)\}\}")
_UNSUPPORTED = ("all", "exclude", "pool", "stdout", "dumpdir", "tmpdir", "script", "job-id",
                "fleecing", "stop", "prune-backups", "maxfiles")  # fmt: skip
CONF_MEMBER = "./etc/vzdump/pct.conf"


def verify_notes_template(template: str) -> None:
    """pve-manager's ``verify_notes_template`` (a 400 on ``notes-template``)."""
    if "\n" in template:
        raise param_error({"notes-template": "contains a line feed"})
    problems = [
        f"escape sequence '\\{m.group(1)}' at char {m.start()}"
        for m in re.finditer(r"\\(.)", template)
        if m.group(1) not in ("n", "\\")
    ]
    known = ("cluster", "guestname", "node", "vmid")
    problems += [
        f"variable '{m.group(1)}' at char {m.end() - len(m.group(1))}"
        for m in _NOTES_VAR.finditer(template)
        if m.group(1) not in known
    ]
    if problems:
        raise param_error({"notes-template": "found unknown: " + ", ".join(problems)})


def render_notes(template: str, info: Mapping[str, str]) -> str:
    text = re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else "\\", template)
    return _NOTES_VAR.sub(lambda m: info.get(m.group(1), m.group(0)), text)


@dataclass(frozen=True)
class Job:
    vmids: tuple[int, ...]
    storage: str
    mode: str
    compress: str
    notes: str | None
    protected: bool
    cmdline: str


def _job(guests: Guests, params: Mapping[str, Any], who: Identity) -> Job:
    v = validate(method_schema("/nodes/{node}/vzdump", "POST"), {"node": guests.name, **params})
    for p in _UNSUPPORTED:
        if p in v:
            raise PveError(500, f"lab: vzdump parameter '{p}' is not supported")
    if not v.get("vmid"):
        raise param_error({"vmid": "property is missing"})
    if v.get("notes-template"):
        verify_notes_template(str(v["notes-template"]))
    vmids = tuple(sorted({int(x) for x in re.split(r"[,;\s]+", str(v["vmid"])) if x}))
    storage = str(v.get("storage", "local"))
    if "backup" not in guests.storages.get(storage).content:
        raise PveError(500, f"can't use storage '{storage}' for backups - wrong content type")
    check_vzdump_perm(guests.auth, who, storage)
    compress = {"1": "lzo"}.get(str(v.get("compress", "0")), str(v.get("compress", "0")))
    if compress not in _COMPRESS:
        raise PveError(500, f"lab: compress={compress} is not supported (use 0, gzip or zstd)")
    args = " ".join(f"--{k} {v[k]}" for k in sorted(v) if k not in ("node", "vmid"))
    return Job(vmids, storage, str(v.get("mode", "snapshot")), compress,
               str(v["notes-template"]) if v.get("notes-template") else None,
               is_true(str(v.get("protected", "0"))),
               f"vzdump {' '.join(map(str, vmids))} {args}".strip())  # fmt: skip


def backup(guests: Guests, params: Mapping[str, Any], who: Identity) -> str:
    job = _job(guests, params, who)

    def body(log: TaskLog) -> None:
        log.write(f"INFO: starting new backup job: {job.cmdline}")
        errors = 0
        for vmid in job.vmids:
            guests.auth.require(who, f"/vms/{vmid}", "VM.Backup")
            t0 = time.monotonic()
            log.write(f"INFO: Starting Backup of VM {vmid} (lxc)")
            try:
                _backup_one(guests, job, vmid, log)
            except Exception as e:
                errors += 1
                msg = e.message if isinstance(e, PveError) else str(e)
                log.write(f"ERROR: Backup of VM {vmid} failed - {msg.rstrip()}")
                continue
            took = time.strftime("%H:%M:%S", time.gmtime(int(time.monotonic() - t0)))
            log.write(f"INFO: Finished Backup of VM {vmid} ({took})")
        if errors:
            log.write("INFO: Backup job finished with errors")
            raise PveError(500, "job errors")
        log.write("INFO: Backup job finished successfully")

    return guests.worker.start("vzdump", job.vmids[0] if len(job.vmids) == 1 else "", who, body)


def _included(opts: Mapping[str, str], log: TaskLog) -> list[tuple[str, str, str]]:
    """``(key, volid, path in the CT)`` of what the backup holds; logs what it leaves out."""
    out = []
    for key, vol, kind in snapshots.mounts(opts):
        where = "/" if key == "rootfs" else _mp_path(opts[key])
        if snapshots.backup_enabled(key, opts[key]):
            log.write(f"INFO: including mount point {key} ('{where}') in backup")
            out.append((key, vol, where))
        else:
            reason = "not a volume" if kind != "volume" else "disabled"
            log.write(
                f"INFO: excluding {kind} mount point {key} ('{where}') from backup ({reason})"
            )
    return out


def _mp_path(value: str) -> str:
    m = re.search(r"(?:^|,)mp=([^,]+)", value)
    return m.group(1) if m else ""


def _backup_one(guests: Guests, job: Job, vmid: int, log: TaskLog) -> None:
    c = guests.load(vmid)
    opts = c.main.options
    running = guests.is_running(vmid)
    log.write(f"INFO: status = {'running' if running else 'stopped'}")
    log.write(f"INFO: CT Name: {opts.get('hostname', f'CT{vmid}')}")
    parts = _included(opts, log)
    mode = job.mode
    if mode == "snapshot" and not snapshots.has_snapshot_feature(guests, opts, backup_only=True):
        log.write("INFO: mode failure - some volumes do not support snapshots")
        log.write("INFO: trying 'suspend' mode instead")
        mode = "suspend"
    log.write(f"INFO: backup mode: {mode}")
    stamp = time.strftime("%Y_%m_%d-%H_%M_%S", time.localtime())
    ext = ".tar" + _COMPRESS[job.compress][0]
    dump = guests.storages.path(job.storage) / "dump"
    dump.mkdir(parents=True, exist_ok=True)
    archive = dump / f"vzdump-lxc-{vmid}-{stamp}{ext}"
    guests.store.set_lock(vmid, "backup")
    restart = False
    try:
        sources = {vol: guests.storages.volume_path(vol) for _, vol, _ in parts}
        if mode == "snapshot":
            log.write("INFO: create storage snapshot 'vzdump'")
            guests.store.set_lock(vmid, None)
            snapshots.take(guests, vmid, "vzdump", log, "vzdump backup snapshot")
            guests.store.set_lock(vmid, "backup")
            sources = {vol: snapshots.snap_path(guests, vmid, "vzdump", vol) for vol in sources}
        elif mode == "stop" and running:
            log.write("INFO: stopping virtual guest")
            guests.runtime.shutdown(vmid, 60)
            restart = True
        config = _archived_config(c)
        log.write(f"INFO: creating vzdump archive '{archive}'")
        base = _host_root(c)
        _write_archive(archive, config, [(sources[v], w) for _, v, w in parts], base, job.compress)
        log.write(f"INFO: archive file size: {archive.stat().st_size // 1024}KB")
        if job.notes:
            log.write("INFO: adding notes to backup")
            info = {"cluster": "standalone node", "node": guests.name, "vmid": str(vmid),
                    "guestname": opts.get("hostname", f"CT{vmid}")}  # fmt: skip
            archive.with_name(archive.name + ".notes").write_text(
                render_notes(job.notes, info) + "\n"
            )
        if job.protected:
            archive.with_name(archive.name + ".protected").touch()
    except Exception:
        archive.unlink(missing_ok=True)
        raise
    finally:
        guests.store.set_lock(vmid, None)
        if mode == "snapshot" and "vzdump" in guests.load(vmid).snapshots:
            log.write("INFO: cleanup temporary 'vzdump' snapshot")
            snapshots.remove(guests, vmid, "vzdump", log, locked_by="none")
        if restart:
            log.write("INFO: restarting vm")
            guests.start_now(vmid, log)
    archive.with_name(archive.name.split(".tar")[0] + ".log").write_text(
        "".join(f"{line['t']}\n" for line in guests.tasks.log(_current_upid(log), 0, 0)[0])
    )


def _current_upid(log: TaskLog) -> str:
    return log.path.name[: -len(".log")]


def _archived_config(c: CtConf) -> str:
    o = {k: v for k, v in c.main.options.items() if k not in ("lock", "parent")}
    return confmod.write(CtConf(Section(o, c.main.raw, c.main.description)))


def _host_root(c: CtConf) -> int:
    """Host uid of the CT's root (0 for a privileged CT)."""
    if not is_true(c.main.options.get("unprivileged")):
        return 0
    for key, value in c.main.raw:
        parts = value.split()
        if key == "lxc.idmap" and len(parts) == 4 and parts[:2] == ["u", "0"]:
            return int(parts[2])
    return 100000


def _write_archive(
    archive: Path, config: str, sources: list[tuple[Path, str]], base: int, compress: str
) -> None:
    """tar of ``config`` + ``sources`` (dir, path in the CT), owners shifted by ``base``."""

    def shift(ti: tarfile.TarInfo) -> tarfile.TarInfo:
        for attr in ("uid", "gid"):
            n = getattr(ti, attr)
            if base and base <= n < base + 65536:
                setattr(ti, attr, n - base)
        ti.uname = ti.gname = ""
        return ti

    tmp = archive.with_name(f".{archive.name}.tmp")
    with tmp.open("wb") as out:
        cmd = _COMPRESS[compress][1]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out) if cmd else None
        stream: IO[bytes] = proc.stdin if proc and proc.stdin else out
        with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in ("./etc", "./etc/vzdump"):
                info = tarfile.TarInfo(name)
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                tar.addfile(info)
            data = config.encode()
            info = tarfile.TarInfo(CONF_MEMBER)
            info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
            tar.addfile(info, io.BytesIO(data))
            for src, where in sources:
                arc = "." if where == "/" else "." + where.rstrip("/")
                tar.add(str(src), arcname=arc, filter=shift)
        if proc is not None:
            assert proc.stdin is not None
            proc.stdin.close()
            if proc.wait() != 0:
                raise PveError(500, f"compressing the archive failed ({cmd})")
    tmp.replace(archive)


def _open_archive(path: Path) -> tuple[IO[bytes], Callable[[], None]]:
    name = path.name
    cmd = (
        ["zstd", "-dc"]
        if name.endswith(".zst")
        else ["gzip", "-dc"]
        if name.endswith(".gz")
        else None
    )
    if cmd is None:
        f = path.open("rb")
        return f, f.close
    proc = subprocess.Popen([*cmd, str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None

    def close() -> None:
        assert proc.stdout is not None
        proc.stdout.close()
        proc.kill()
        proc.wait()

    return proc.stdout, close


def read_config(path: Path) -> str:
    """``./etc/vzdump/pct.conf`` of a vzdump archive (PVE: ``extract_vzdump_config``)."""
    stream, close = _open_archive(path)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                if member.name in (CONF_MEMBER, CONF_MEMBER[2:]) and member.isfile():
                    f = tar.extractfile(member)
                    assert f is not None
                    return f.read().decode()
    except tarfile.TarError as e:
        raise PveError(500, f"unable to read the backup archive '{path.name}': {e}") from e
    finally:
        close()
    raise PveError(500, f"unable to extract configuration from '{path.name}'")


def extract_config(guests: Guests, volume: str, who: Identity) -> str:
    """``GET /nodes/{node}/vzdump/extractconfig``."""
    path = _backup_path(guests, volume, who, None)
    return read_config(path)


def visible_backups(
    guests: Guests, who: Identity, sid: str, items: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The content listing drops backups ``check_volume_access`` refuses to ``who``
    (pve-storage's content index); other content is left as it is."""
    out = []
    for item in items:
        if item.get("content") == "backup":
            try:
                check_backup_volume_access(guests.auth, who, sid, item.get("vmid"), None)
            except PveError:
                continue
        out.append(item)
    return out


def _backup_path(guests: Guests, volid: str, who: Identity, vmid: int | None) -> Path:
    sid, colon, name = volid.partition(":")
    if not colon:
        if not who.is_root:
            raise PveError(500, "Only root can pass arbitrary filesystem paths.")
        return Path(volid)
    if not name.startswith("backup/"):
        raise PveError(500, f"unable to use volume {volid} - content type needs to be 'backup'")
    m = re.match(r"^backup/vzdump-(?:lxc|qemu)-(\d+)-", name)
    check_backup_volume_access(guests.auth, who, sid, int(m.group(1)) if m else None, vmid)
    path = guests.storages.volume_path(volid)
    if not path.is_file():
        raise PveError(500, f"volume '{volid}' does not exist")
    return path


# ------------------------------------------------------------------ restore


def restore(guests: Guests, v: Mapping[str, Any], who: Identity) -> str:
    """``POST /nodes/{node}/lxc`` with ``restore=1``: a new CT from a backup archive; the
    volumes on ``storage`` (default ``local``, as PVE) with their backed-up sizes."""
    vmid = int(v["vmid"])
    if guests.store.path(vmid).exists():
        if v.get("force"):
            raise PveError(500, "lab: restore over an existing CT (force) is not supported")
        raise PveError(500, f"CT {vmid} already exists on node '{guests.name}'")
    if not guests.auth.allowed(who, f"/vms/{vmid}", "VM.Allocate"):
        raise permission_denied()
    archive = _backup_path(guests, str(v["ostemplate"]), who, vmid)
    storage = str(v.get("storage", "local"))
    extra = {k: str(x) for k, x in v.items() if k not in (
        "node", "vmid", "ostemplate", "storage", "restore", "force", "unique", "start",
        "unprivileged", "pool", "bwlimit", "ignore-unpack-errors", "ha-managed")}  # fmt: skip
    with guests.locked():
        if guests.store.path(vmid).exists():
            raise PveError(500, f"CT {vmid} already exists on node '{guests.name}'")
        guests.store.write(vmid, CtConf(Section({"lock": "create"})))

    if v.get("unique"):  # PVE: new MAC addresses (set below over the archive's)
        extra = {**extra, "_unique": "1"}

    def body(log: TaskLog) -> None:
        try:
            _do_restore(guests, vmid, archive, storage, extra, who, log)
        except Exception as e:
            guests.purge(vmid)
            msg = e.message if isinstance(e, PveError) else str(e)
            raise PveError(500, f"unable to restore CT {vmid} - {msg}") from e
        if v.get("start"):
            guests.start_now(vmid, log)

    return guests.worker.start("vzrestore", vmid, who, body)


def _restore_mounts(
    old: Mapping[str, str], storage: str, who: Identity, log: TaskLog
) -> tuple[dict[str, str], dict[str, str]]:
    """(new volumes ``storage:GiB,...``, bind/device mount points restored as they were)."""
    if "rootfs" not in old:
        raise PveError(500, "rootfs configuration could not be recovered, please check and "
                            "specify manually!")  # fmt: skip
    volumes: dict[str, str] = {}
    delayed: dict[str, str] = {}
    for key, vol, kind in snapshots.mounts(old):
        value = old[key]
        if kind != "volume":
            if key == "rootfs":
                raise PveError(500, f"restoring rootfs to {kind} mount is only possible by "
                                    "specifying -rootfs manually!")  # fmt: skip
            if not who.is_root:
                raise PveError(500, f"restoring '{key}' to {kind} mount is only possible for root")
            delayed[key] = value
            continue
        m = re.search(r"(?:^|,)size=(\d+(?:\.\d+)?)([KMGT]?)", value)
        if not m:
            raise PveError(500, f"unable to detect disk size - please specify {key} (size)")
        gib = float(m.group(1)) * 1024 ** " KMGT".index(m.group(2) or " ") / 1024**3
        rest = [p for p in value.split(",")[1:] if not p.startswith("size=")]
        size = f"{gib:g}"
        volumes[key] = ",".join([f"{storage}:{size}", *rest])
        log.write(f"restoring {key} ('{vol}') to a new volume on '{storage}' ({size} GiB)")
    return volumes, delayed


def _do_restore(  # noqa: PLR0917
    guests: Guests,
    vmid: int,
    archive: Path,
    storage: str,
    extra: Mapping[str, str],
    who: Identity,
    log: TaskLog,
) -> None:
    log.write(f"recovering backed-up configuration from '{archive.name}'")
    old = confmod.parse(read_config(archive), source=archive.name)
    volumes, delayed = _restore_mounts(old.main.options, storage, who, log)
    unprivileged = is_true(old.main.options.get("unprivileged"))
    if not unprivileged:
        guests.auth.require(who, "/", "Sys.Modify")
    for key in volumes:
        vol = mount_volume(key, volumes[key])
        guests.auth.require(who, f"/storage/{vol.partition(':')[0]}", "Datastore.AllocateSpace")
    raw = old.main.raw if who.is_root else ()
    if old.main.raw and not who.is_root:
        lines = "".join(f"{k}: {x}\n" for k, x in old.main.raw)
        rule = "-" * 32
        log.warn(f"skipping custom lxc options, restore manually as root:\n{rule}\n{lines}{rule}")
    owner = _host_root(CtConf(Section({"unprivileged": "1"} if unprivileged else {}, raw)))
    final: dict[str, str] = {}
    for key in sorted(volumes, key=lambda k: (k != "rootfs", k)):
        final[key] = guests.realise(vmid, key, volumes[key], owner if unprivileged else None, log)
    rootfs = guests.storages.volume_path(mount_volume("rootfs", final["rootfs"]))
    log.write(f"restoring '{archive.name}' now..")
    idmap = [x for k, x in raw if k == "lxc.idmap"] or ["u 0 100000 65536", "g 0 100000 65536"]
    guests.runtime.create_rootfs(vmid, archive, rootfs, idmap if unprivileged else (), unprivileged)
    for key, value in final.items():
        if key != "rootfs":
            volume = guests.storages.volume_path(mount_volume(key, value))
            _move_into_volume(rootfs, _mp_path(value), volume)
    conf_in_ct = rootfs / "etc" / "vzdump" / "pct.conf"
    conf_in_ct.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        conf_in_ct.parent.rmdir()
    skip = re.compile(r"^(digest|rootfs|unprivileged|parent|template|lock|mp\d+|unused\d+)$")
    opts = {k: x for k, x in old.main.options.items() if not skip.match(k)}
    if extra.get("_unique"):
        for k in [k for k in opts if re.fullmatch(r"net\d+", k)]:
            mac = "BC:24:11:" + ":".join(f"{b:02X}" for b in secrets.token_bytes(3))
            opts[k] = re.sub(r"hwaddr=[0-9A-Fa-f:]+", f"hwaddr={mac}", opts[k])
    opts.update({k: x for k, x in extra.items() if k != "_unique"})
    opts.update(final)
    opts.update(delayed)
    if unprivileged:
        opts["unprivileged"] = "1"
    with guests.locked():
        guests.store.write(vmid, CtConf(Section(opts, tuple(raw), old.main.description)))


def _move_into_volume(rootfs: Path, where: str, volume: Path) -> None:
    """What the archive put under ``rootfs/<mp path>`` belongs on the mount point's volume."""
    src = rootfs / where.lstrip("/")
    if not where or not src.is_dir() or src.is_symlink():
        return
    for child in src.iterdir():
        shutil.move(str(child), str(volume / child.name))
