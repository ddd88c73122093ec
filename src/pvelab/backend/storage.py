"""The lab's storages: directories under ``<lab>/storage``.

- ``local`` (type ``dir``, content ``vztmpl,iso,backup,snippets``): ``<lab>/storage/local``,
  templates in ``template/cache/`` (volid ``local:vztmpl/<file>``).
- ``local-lvm`` (type ``lvmthin``, content ``rootdir,images``): ``<lab>/storage/local-lvm``,
  one directory per volume, ``images/<vmid>/vm-<vmid>-disk-<n>/`` (volid
  ``local-lvm:vm-<vmid>-disk-<n>``), used as a directory rootfs or mount point volume.
  Snapshots are copies in ``snapshots/<vmid>/<snap>/<volname>/``.
- ``local-dir`` (type ``dir``, content ``rootdir,images``): container volumes as on
  ``local-lvm`` but **not snapshot-capable** (PVE's ``dir`` storage cannot snapshot raw or
  subvol volumes): a CT with a volume here answers ``snapshot feature is not available``.
  (PVE names such a volume ``local-dir:<vmid>/vm-<vmid>-disk-<n>.raw``; the lab keeps its
  one naming ``local-dir:vm-<vmid>-disk-<n>``.)

Backups (vzdump) go to ``local/dump/`` as ``vzdump-lxc-<vmid>-<time>.tar[.zst|.gz]`` with
``.notes`` and ``.log`` beside them (volid ``local:backup/<file>``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvelab.backend.errors import PveError

TEMPLATE_EXT = re.compile(r"\.tar(\.(gz|xz|zst|bz2))?$")
_FORMATS = {
    ".tar.zst": "tzst",
    ".tar.gz": "tgz",
    ".tar.xz": "txz",
    ".tar.bz2": "tbz2",
    ".tar": "tar",
}
_VOLNAME = re.compile(r"^vm-(\d+)-disk-(\d+)$")


@dataclass(frozen=True)
class StorageDef:
    id: str
    type: str
    content: tuple[str, ...]
    #: whether its container volumes can be snapshotted (PVE: ``volume_has_feature``)
    snapshot: bool = False


STORAGES = (
    StorageDef("local", "dir", ("backup", "iso", "snippets", "vztmpl")),
    StorageDef("local-lvm", "lvmthin", ("images", "rootdir"), snapshot=True),
    StorageDef("local-dir", "dir", ("images", "rootdir")),
)
BACKUP_NAME = re.compile(
    r"^vzdump-(lxc|qemu)-(\d+)-(\d{4}_\d\d_\d\d-\d\d_\d\d_\d\d)\.(tar(?:\.(?:zst|gz))?)$"
)


class Storages:
    def __init__(self, root: Path) -> None:
        self.root = root

    def get(self, sid: str) -> StorageDef:
        for s in STORAGES:
            if s.id == sid:
                return s
        raise PveError(500, f"storage '{sid}' does not exist")

    def path(self, sid: str) -> Path:
        self.get(sid)
        return self.root / sid

    def ensure(self) -> None:
        (self.root / "local" / "template" / "cache").mkdir(parents=True, exist_ok=True)
        for s in STORAGES:
            if "rootdir" in s.content:
                (self.root / s.id / "images").mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ volumes

    def volume_path(self, volid: str) -> Path:
        """The directory (or file) behind a volume id."""
        sid, _, name = volid.partition(":")
        store = self.get(sid)
        if store.type == "dir" and not ("rootdir" in store.content and _VOLNAME.match(name)):
            kind, _, file = name.partition("/")
            sub = {"vztmpl": "template/cache", "iso": "template/iso", "backup": "dump",
                   "snippets": "snippets"}.get(kind)  # fmt: skip
            if sub is None or not file or "/" in file:
                raise PveError(500, f"unable to parse directory volume name '{name}'")
            return self.root / sid / sub / file
        m = _VOLNAME.match(name)
        if not m:
            raise PveError(500, f"unable to parse lvm volume name '{name}'")
        return self.root / sid / "images" / m.group(1) / name

    def allocate(self, sid: str, vmid: int, size_gib: float, owner: int | None) -> str:
        """A new directory volume ``vm-<vmid>-disk-<n>``; its top owned by the CT's root."""
        store = self.get(sid)
        if "rootdir" not in store.content:
            raise PveError(
                500, f"storage '{sid}' does not allow content type 'rootdir' (Container)"
            )
        base = self.root / sid / "images" / str(vmid)
        base.mkdir(parents=True, exist_ok=True)
        n = 0
        while (base / f"vm-{vmid}-disk-{n}").exists():
            n += 1
        path = base / f"vm-{vmid}-disk-{n}"
        path.mkdir()
        if owner is not None and os.geteuid() == 0:
            os.chown(path, owner, owner)
        return f"{sid}:vm-{vmid}-disk-{n}"

    def free(self, volid: str) -> None:
        path = self.volume_path(volid)
        if BACKUP_NAME.match(path.name):  # pve-storage's archive_remove
            if path.with_name(path.name + ".protected").exists():
                raise PveError(500, f"cannot remove protected archive '{path}'")
            path.with_name(path.name + ".notes").unlink(missing_ok=True)
            path.with_name(path.name.split(".tar")[0] + ".log").unlink(missing_ok=True)
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()

    def vm_volumes(self, vmid: int) -> list[str]:
        out: list[str] = []
        for store in STORAGES:
            if "rootdir" in store.content:
                base = self.root / store.id / "images" / str(vmid)
                if base.is_dir():
                    out.extend(f"{store.id}:{p.name}" for p in sorted(base.iterdir()))
        return out

    def snapshot_dir(self, sid: str, vmid: int, snap: str) -> Path:
        return self.root / sid / "snapshots" / str(vmid) / snap

    # ------------------------------------------------------------ content

    def content(
        self, sid: str, kind: str | None = None, vmid: int | None = None
    ) -> list[dict[str, Any]]:
        store = self.get(sid)
        out: list[dict[str, Any]] = []
        base = self.root / sid
        if "backup" in store.content and kind in (None, "backup"):
            out.extend(b for b in self.backups(sid) if vmid is None or b["vmid"] == vmid)
        if "vztmpl" in store.content:
            if kind in (None, "vztmpl"):
                cache = base / "template" / "cache"
                for f in sorted(cache.glob("*")) if cache.is_dir() else []:
                    ext = TEMPLATE_EXT.search(f.name)
                    if not f.is_file() or not ext:
                        continue
                    st = f.stat()
                    out.append({
                        "volid": f"{sid}:vztmpl/{f.name}", "content": "vztmpl",
                        "format": _FORMATS.get(ext.group(0), "tar"), "size": st.st_size,
                        "ctime": int(st.st_mtime),
                    })  # fmt: skip
            return out
        if kind not in (None, "rootdir", "images"):
            return out
        images = base / "images"
        for vdir in sorted(images.iterdir()) if images.is_dir() else []:
            if vmid is not None and vdir.name != str(vmid):
                continue
            for vol in sorted(vdir.iterdir()):
                out.append({
                    "volid": f"{sid}:{vol.name}", "content": "rootdir", "format": "subvol",
                    "size": 0, "vmid": int(vdir.name), "ctime": int(vol.stat().st_mtime),
                })  # fmt: skip
        return out

    def backups(self, sid: str) -> list[dict[str, Any]]:
        """Backup archives of a ``backup`` storage, as ``GET .../content?content=backup``
        lists them (``notes`` from ``<archive>.notes``, ``protected`` from ``.protected``)."""
        dump = self.root / sid / "dump"
        out: list[dict[str, Any]] = []
        for f in sorted(dump.iterdir()) if dump.is_dir() else []:
            m = BACKUP_NAME.match(f.name)
            if not m or not f.is_file():
                continue
            st = f.stat()
            item: dict[str, Any] = {
                "volid": f"{sid}:backup/{f.name}", "content": "backup", "format": m.group(4),
                "size": st.st_size, "ctime": int(st.st_mtime), "vmid": int(m.group(2)),
                "subtype": m.group(1),
            }  # fmt: skip
            notes = f.with_name(f.name + ".notes")
            if notes.is_file():
                item["notes"] = notes.read_text().rstrip("\n")
            if f.with_name(f.name + ".protected").exists():
                item["protected"] = 1
            out.append(item)
        return out

    def snapshot_capable(self, volid: str) -> bool:
        """PVE's ``volume_has_feature('snapshot')``: false for a path (bind or device mount)
        and for a volume on a storage that cannot snapshot."""
        sid, colon, _ = volid.partition(":")
        if not colon or volid.startswith("/"):
            return False
        return self.get(sid).snapshot

    def template_path(self, volid: str) -> Path:
        sid, _, name = volid.partition(":")
        store = self.get(sid)
        if not name.startswith("vztmpl/"):
            raise PveError(500, f"unable to use volume {volid} - content type needs to be 'vztmpl'")
        if "vztmpl" not in store.content:
            raise PveError(500, f"storage '{sid}' does not support content type 'vztmpl'")
        return self.volume_path(volid)

    def download(
        self,
        sid: str,
        filename: str,
        url: str,
        checksum: tuple[str, str] | None,
        write: Callable[[str], None],
    ) -> str:
        """Fetch ``url`` into the template cache (loopback only), verify the checksum."""
        target = self.path(sid) / "template" / "cache" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{filename}.tmp.{os.getpid()}")
        write(f"downloading {url} to {target}")
        digest = hashlib.new(checksum[0]) if checksum else None
        size = 0
        try:
            with urllib.request.urlopen(url, timeout=60) as resp, tmp.open("wb") as out:  # noqa: S310
                while chunk := resp.read(1 << 20):
                    out.write(chunk)
                    size += len(chunk)
                    if digest is not None:
                        digest.update(chunk)
        except (urllib.error.URLError, OSError) as e:
            tmp.unlink(missing_ok=True)
            raise PveError(500, f"download failed: {e}") from e
        write(f"downloaded {size} bytes")
        if checksum and digest is not None:
            got = digest.hexdigest()
            if got.lower() != checksum[1].lower():
                tmp.unlink(missing_ok=True)
                raise PveError(500, f"checksum mismatch: got '{got}' != expect '{checksum[1]}'")
            write("calculated checksum...OK, checksum verified")
        tmp.replace(target)
        return f"{sid}:vztmpl/{filename}"


def copy_tree(src: Path, dst: Path) -> None:
    """``cp -a`` (keeps owners, modes, links, xattrs)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)
