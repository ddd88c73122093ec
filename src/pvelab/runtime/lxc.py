"""The lab's runtime: PVE container configs made real with the lxc tools.

Containers live under ``<lab>/lxc/<vmid>/`` (an lxcpath of their own, so the host's
``/var/lib/lxc`` is never touched). ``start`` writes ``<lab>/lxc/<vmid>/config`` from the
PVE config as ``pve-container`` does (``lxc.idmap``, ``nesting``, ``keyctl`` via seccomp,
mount points, ``net0`` on a lab bridge, hostname, nameserver, cgroup limits), plus the
files PVE writes into the rootfs before boot (``/etc/hostname``, ``/etc/hosts``,
``/etc/resolv.conf``, ``/etc/network/interfaces``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pvelab.runtime_protocol import ExecResult

DEFAULT_LAB_DIR = "/var/lib/pvestack-lab"
DEFAULT_IDMAP = ("u 0 100000 65536", "g 0 100000 65536")
LXC_CONFIG_DIR = Path("/usr/share/lxc/config")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENOSYS = 38


def parse_propstring(value: str, default_key: str | None = None) -> dict[str, str]:
    """``"a=1,b=2"`` (PVE property string) -> dict; a bare first item is ``default_key``."""
    out: dict[str, str] = {}
    for i, part in enumerate(p for p in value.split(",") if p):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        elif i == 0 and default_key is not None:
            out[default_key] = part.strip()
        else:
            raise ValueError(f"invalid property string item {part!r} in {value!r}")
    return out


@dataclass(frozen=True)
class IdRange:
    kind: str  # "u" or "g"
    ct: int
    host: int
    count: int

    @classmethod
    def parse(cls, line: str) -> IdRange:
        parts = line.split()
        if len(parts) != 4 or parts[0] not in ("u", "g", "b"):
            raise ValueError(f"bad idmap line {line!r}")
        return cls(parts[0], int(parts[1]), int(parts[2]), int(parts[3]))


def idmap_ranges(idmap: Sequence[str]) -> list[IdRange]:
    out: list[IdRange] = []
    for line in idmap:
        r = IdRange.parse(line)
        if r.kind == "b":
            out += [IdRange("u", r.ct, r.host, r.count), IdRange("g", r.ct, r.host, r.count)]
        else:
            out.append(r)
    return out


def host_id(ranges: Sequence[IdRange], kind: str, ct_id: int) -> int:
    for r in ranges:
        if r.kind == kind and r.ct <= ct_id < r.ct + r.count:
            return r.host + ct_id - r.ct
    raise ValueError(f"container {kind}id {ct_id} is not mapped")


def bool_opt(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "yes", "on", "true")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


SUBID_LEDGER = Path("/var/lib/misc/pvestack-lab-subids")


def _ledger_for(etc: Path) -> Path:
    return SUBID_LEDGER if etc == Path("/etc") else etc / "pvestack-lab-subids"


def _read_ledger(ledger: Path) -> list[tuple[str, str, str]]:
    if not ledger.exists():
        return []
    out = []
    for entry in ledger.read_text().splitlines():
        parts = entry.split(" ", 2)
        if len(parts) == 3:
            out.append((parts[0], parts[1], parts[2]))
    return out


def _write_ledger(ledger: Path, entries: Sequence[tuple[str, str, str]]) -> None:
    if not entries:
        ledger.unlink(missing_ok=True)
        return
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_text("".join(f"{a} {b} {c}\n" for a, b, c in entries))


def ensure_subids(ranges: Sequence[IdRange], record: Path, etc: Path = Path("/etc")) -> None:
    """Allow root the host ids of ``ranges`` in /etc/subuid and /etc/subgid (as PVE requires).

    Lines a lab adds are noted in a machine-wide ledger under the lab's ``record`` (its
    owner key), so ``remove_recorded_subids`` removes a line only when no other lab on the
    machine still uses it, and never a line the administrator had before."""
    ledger = _ledger_for(etc)
    owner = str(record)
    with _locked(etc / "subuid"):
        entries = _read_ledger(ledger)
        for kind, fname in (("u", "subuid"), ("g", "subgid")):
            f = etc / fname
            text = f.read_text() if f.exists() else ""
            have: list[tuple[int, int, str]] = []
            for line in text.splitlines():
                parts = line.split(":")
                if len(parts) == 3 and parts[0] in ("root", "0"):
                    with contextlib.suppress(ValueError):
                        have.append((int(parts[1]), int(parts[2]), line))
            for r in ranges:
                if r.kind != kind:
                    continue
                covering = [ln for s, n, ln in have if s <= r.host and r.host + r.count <= s + n]
                if covering:
                    ours = [ln for ln in covering if any(e[:2] == (fname, ln) for e in entries)]
                    if (
                        ours
                        and len(ours) == len(covering)
                        and (fname, ours[0], owner) not in entries
                    ):
                        entries.append((fname, ours[0], owner))
                    continue
                line = f"root:{r.host}:{r.count}"
                if text and not text.endswith("\n"):
                    text += "\n"
                text += line + "\n"
                have.append((r.host, r.count, line))
                entries.append((fname, line, owner))
            f.write_text(text)
        _write_ledger(ledger, entries)


def remove_recorded_subids(record: Path, etc: Path = Path("/etc")) -> None:
    """Drop the lab's (``record``) claims; remove lines no lab claims any more."""
    ledger = _ledger_for(etc)
    owner = str(record)
    with _locked(etc / "subuid"):
        entries = _read_ledger(ledger)
        mine = [e for e in entries if e[2] == owner]
        rest = [e for e in entries if e[2] != owner]
        for fname, line, _ in mine:
            if any(e[:2] == (fname, line) for e in rest):
                continue
            f = etc / fname
            if not f.exists():
                continue
            lines = f.read_text().splitlines()
            if line in lines:
                lines.remove(line)
                f.write_text("".join(x + "\n" for x in lines))
        _write_ledger(ledger, rest)


def _safe_write(
    rootfs: Path, rel: str, content: str, uid: int, gid: int, *, mode: int = 0o644
) -> None:
    """Write a file into a (stopped) container's rootfs without following links out of it."""
    root = rootfs.resolve()
    target = root / rel.lstrip("/")
    parent = target.parent.resolve()
    if not parent.is_relative_to(root) or not parent.is_dir():
        return
    path = parent / target.name
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, content.encode())
        if os.geteuid() == 0:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


class LxcRuntime:
    """The ``Runtime`` of the lab on real LXC."""

    def __init__(
        self,
        lab_dir: Path | None = None,
        *,
        bridge_subnet: str | None = None,
        nameserver: str | None = None,
        storage_root: Path | None = None,
        lxc_config_dir: Path = LXC_CONFIG_DIR,
    ) -> None:
        """Without arguments (as the API server loads it): the lab dir from
        ``PVESTACK_LAB_DIR`` and the bridge's subnet and DNS from ``<lab>/run/network.json``
        (written by ``network.up``). ``lxc_config_dir`` holds LXC's distribution configs
        (Debian's ``lxc`` and ``lxc-templates`` packages; PVE ships the same files)."""
        self.lxc_config_dir = lxc_config_dir
        self.lab_dir = lab_dir or Path(os.environ.get("PVESTACK_LAB_DIR", DEFAULT_LAB_DIR))
        self.lxcpath = self.lab_dir / "lxc"
        self.storage_root = storage_root or self.lab_dir / "storage"
        netinfo: dict[str, str] = {}
        with contextlib.suppress(OSError, ValueError):
            netinfo = json.loads((self.lab_dir / "run" / "network.json").read_text())
        subnet = bridge_subnet or netinfo.get("subnet")
        self.subnet = ipaddress.IPv4Network(subnet) if subnet else None
        self.nameserver = nameserver or netinfo.get("gateway")
        self.subid_record = self.lab_dir / "state" / "subids-added"

    # -- helpers -------------------------------------------------------------------------
    def _dir(self, vmid: int) -> Path:
        return self.lxcpath / str(vmid)

    def _lxc(
        self, tool: str, vmid: int, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, "-n", str(vmid), "-P", str(self.lxcpath), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def volume_path(self, volume: str, vmid: int) -> Path:
        """A PVE volume id (``local-lvm:vm-100-disk-0``) or host path -> a directory."""
        if volume.startswith("/"):
            return Path(volume)
        storage, sep, name = volume.partition(":")
        if not sep or not name or "/" in name or name.startswith("."):
            raise RuntimeError(f"unable to parse volume ID '{volume}'")
        m = re.match(r"^(?:base|vm|subvol)-(\d+)-", name)
        owner = m.group(1) if m else str(vmid)
        return self.storage_root / storage / "images" / owner / name

    # -- Runtime protocol ----------------------------------------------------------------
    def create_rootfs(
        self, vmid: int, template: Path, rootfs: Path, idmap: Sequence[str], unprivileged: bool
    ) -> None:
        rootfs.mkdir(parents=True, exist_ok=True)
        d = self._dir(vmid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "rootfs.path").write_text(str(rootfs) + "\n")
        decompress = _decompressor(template)
        tar = ["tar", "-xpf", "-", "-C", str(rootfs), "--numeric-owner", "--exclude=./dev/*"]
        if unprivileged:
            ranges = idmap_ranges(idmap or DEFAULT_IDMAP)
            ensure_subids(ranges, self.subid_record)
            os.chown(rootfs, host_id(ranges, "u", 0), host_id(ranges, "g", 0))
            maps: list[str] = []
            for rng in ranges:
                maps += ["-m", f"{rng.kind}:{rng.ct}:{rng.host}:{rng.count}"]
            tar = ["lxc-usernsexec", *maps, "--", *tar]
        with template.open("rb") as src:
            unpack = subprocess.Popen(decompress, stdin=src, stdout=subprocess.PIPE)
            assert unpack.stdout is not None
            r = subprocess.run(tar, stdin=unpack.stdout, capture_output=True, check=False)
            unpack.stdout.close()
            rc = unpack.wait()
        if rc != 0 or r.returncode != 0:
            raise RuntimeError(
                f"unable to extract template {template.name}: "
                + r.stderr.decode(errors="replace").strip()[-2000:]
            )

    def _lab_hash(self) -> str:
        return hashlib.sha256(str(self.lxcpath).encode()).hexdigest()

    def _veth(self, vmid: int, idx: int | str) -> str:
        """PVE's host veth name ``veth<vmid>i<n>``; another lab than the default one adds
        a tag of its own (up to the 15 characters of an interface name), so two labs can
        run the same vmid at once."""
        name = f"veth{vmid}i{idx}"
        if self.lab_dir == Path(DEFAULT_LAB_DIR):
            return name
        return name + self._lab_hash()[: max(0, 15 - len(name))]

    def lxc_config(
        self, vmid: int, conf: Mapping[str, str], raw_lxc: Sequence[tuple[str, str]]
    ) -> str:
        """The LXC config ``start`` writes for this PVE config (pure, for tests and review)."""
        unprivileged = bool_opt(conf.get("unprivileged"))
        features = parse_propstring(conf.get("features", ""))
        lines = [
            *self._base_lines(vmid, conf, raw_lxc, unprivileged, features),
            *_cgroup_limits(conf),
            *self._mount_lines(vmid, conf),
            *self._net_lines(vmid, conf),
            *raw_lxc,
        ]
        keyctl = bool_opt(features.get("keyctl"))
        head = [
            f"# pvestack lab: CT {vmid} from its PVE config (pve-container's translation)",
            f"# features: {conf.get('features', '') or '(none)'}",
            "# keyctl: "
            + (
                "allowed (keyctl=1)"
                if keyctl or not unprivileged
                else "ENOSYS via seccomp (no keyctl=1)"
            ),
        ]
        return "".join(h + "\n" for h in head) + "".join(f"{k} = {v}\n" for k, v in lines)

    def _ostype_configs(self, conf: Mapping[str, str], unprivileged: bool) -> list[str]:
        """The distribution's LXC configs PVE includes (common, and userns if unprivileged)."""
        ostype = conf.get("ostype", "debian")
        cfgdir = self.lxc_config_dir
        if ostype == "unmanaged":
            ostype = "common"
        elif not (cfgdir / f"{ostype}.common.conf").exists():
            # PVE includes the distribution's own config; without it the CT would boot
            # with another set-up than on a real node, so say so instead of guessing.
            raise RuntimeError(
                f"{cfgdir / (ostype + '.common.conf')} is missing: install Debian's "
                "lxc-templates package (make setup does), which ships LXC's distribution "
                "configs as PVE's lxc-pve does"
            )
        prefix = "" if ostype == "common" else f"{ostype}."
        names = ["common.conf" if ostype == "common" else f"{ostype}.common.conf"]
        if unprivileged:
            names.append(f"{prefix}userns.conf")
        return [str(cfgdir / n) for n in names]

    def _base_lines(
        self,
        vmid: int,
        conf: Mapping[str, str],
        raw_lxc: Sequence[tuple[str, str]],
        unprivileged: bool,
        features: Mapping[str, str],
    ) -> list[tuple[str, str]]:
        """Arch, includes, mounts of /proc and /sys, seccomp, cgroup dirs, tty, name, idmap."""
        includes = self._ostype_configs(conf, unprivileged)
        arch = {"amd64": "amd64", "i386": "i686", "arm64": "aarch64"}
        lines = [("lxc.arch", arch.get(conf.get("arch", "amd64"), "amd64"))]
        lines += [("lxc.include", inc) for inc in includes]
        lines.append(("lxc.apparmor.profile", "unconfined"))  # no AppArmor on the lab hosts
        if bool_opt(features.get("nesting")):
            lines.append(("lxc.mount.auto", "proc:rw sys:rw cgroup:rw:force"))
            lines.append(("lxc.include", str(self.lxc_config_dir / "nesting.conf")))
        else:
            lines.append(("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed"))
        # keyctl: PVE blocks keyctl() with ENOSYS for unprivileged CTs unless keyctl=1.
        lines.append(("lxc.seccomp.profile", str(self._dir(vmid) / "rules.seccomp")))
        lines.append(("lxc.monitor.unshare", "1"))
        # cgroups per lab: LXC names them lxc.payload.<name> at the top by default, so two
        # labs running the same vmid on one machine collided ("startup for container
        # '217' failed" in the second lab)
        lab_cg = "pvestack-" + self._lab_hash()[:10]
        lines.append(("lxc.cgroup.dir.monitor", f"{lab_cg}/lxc.monitor.{vmid}"))
        lines.append(("lxc.cgroup.dir.container", f"{lab_cg}/lxc.payload.{vmid}"))
        lines.append(("lxc.tty.max", conf.get("tty", "2")))
        lines.append(("lxc.uts.name", conf.get("hostname", f"CT{vmid}")))
        if unprivileged and not any(k == "lxc.idmap" for k, _ in raw_lxc):
            lines += [("lxc.idmap", line) for line in DEFAULT_IDMAP]
        return lines

    def _mount_lines(self, vmid: int, conf: Mapping[str, str]) -> list[tuple[str, str]]:
        """The rootfs, then the mount points in PVE's order (by path depth: parents first)."""
        rootfs = parse_propstring(conf.get("rootfs", ""), "volume")
        if "volume" not in rootfs:
            raise RuntimeError("missing 'rootfs' configuration")
        lines = [("lxc.rootfs.path", "dir:" + str(self.volume_path(rootfs["volume"], vmid)))]
        mps: list[tuple[str, dict[str, str]]] = []
        for key in sorted(conf):
            if re.fullmatch(r"mp\d+", key):
                mps.append((key, parse_propstring(conf[key], "volume")))
        mps.sort(key=lambda item: item[1].get("mp", "").rstrip("/").count("/"))
        for key, mp in mps:
            target = mp.get("mp")
            if not target or "volume" not in mp:
                raise RuntimeError(f"invalid mount point {key}")
            src = self.volume_path(mp["volume"], vmid)
            if not src.exists():
                raise RuntimeError(f"mount point {key}: {src} does not exist")
            opts = ["bind", "create=dir"]
            if bool_opt(mp.get("ro")):
                opts.append("ro")
            if mp.get("mountoptions"):
                opts += mp["mountoptions"].split(";")
            lines.append(
                ("lxc.mount.entry", f"{src} {target.strip('/')} none {','.join(opts)} 0 0")
            )
        return lines

    def _net_lines(self, vmid: int, conf: Mapping[str, str]) -> list[tuple[str, str]]:
        """One veth per netN on its bridge (host side named by ``_veth``)."""
        lines: list[tuple[str, str]] = []
        for key in sorted(k for k in conf if re.fullmatch(r"net\d+", k)):
            idx = key[3:]
            net = parse_propstring(conf[key])
            lines.append((f"lxc.net.{idx}.type", "veth"))
            lines.append((f"lxc.net.{idx}.veth.pair", self._veth(vmid, idx)))
            if "hwaddr" in net:
                lines.append((f"lxc.net.{idx}.hwaddr", net["hwaddr"]))
            lines.append((f"lxc.net.{idx}.name", net.get("name", f"eth{idx}")))
            if "bridge" in net:
                lines.append((f"lxc.net.{idx}.link", net["bridge"]))
            if "mtu" in net:
                lines.append((f"lxc.net.{idx}.mtu", net["mtu"]))
            lines.append((f"lxc.net.{idx}.flags", "up"))
        return lines

    def seccomp_rules(self, conf: Mapping[str, str]) -> str:
        """The seccomp profile: LXC's common one; keyctl answers ENOSYS unless ``keyctl=1``
        (what PVE does for unprivileged containers)."""
        base = (self.lxc_config_dir / "common.seccomp").read_text()
        features = parse_propstring(conf.get("features", ""))
        if bool_opt(conf.get("unprivileged")) and not bool_opt(features.get("keyctl")):
            base = base.rstrip("\n") + f"\nkeyctl errno {ENOSYS}\n"
        return base

    def _prepare_rootfs(
        self, vmid: int, conf: Mapping[str, str], raw_lxc: Sequence[tuple[str, str]]
    ) -> None:
        rootfs = self.volume_path(parse_propstring(conf["rootfs"], "volume")["volume"], vmid)
        if bool_opt(conf.get("unprivileged")):
            idmap = [v for k, v in raw_lxc if k == "lxc.idmap"] or list(DEFAULT_IDMAP)
            ranges = idmap_ranges(idmap)
            ensure_subids(ranges, self.subid_record)
            uid, gid = host_id(ranges, "u", 0), host_id(ranges, "g", 0)
        else:
            uid = gid = 0
        hostname = conf.get("hostname", f"CT{vmid}")
        short = hostname.split(".")[0]
        _safe_write(rootfs, "etc/hostname", short + "\n", uid, gid)
        hosts = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n"
        hosts += f"127.0.1.1 {hostname}" + (f" {short}" if short != hostname else "") + "\n"
        _safe_write(rootfs, "etc/hosts", hosts, uid, gid)
        servers = conf.get("nameserver", "").replace(",", " ").split()
        if not servers and self.nameserver:
            servers = [self.nameserver]
        resolv = "".join(f"nameserver {s}\n" for s in servers[:3])
        if conf.get("searchdomain"):
            resolv = f"search {conf['searchdomain']}\n" + resolv
        if resolv:
            _safe_write(rootfs, "etc/resolv.conf", resolv, uid, gid)
        ifaces = "auto lo\niface lo inet loopback\n"
        for key in sorted(k for k in conf if re.fullmatch(r"net\d+", k)):
            net = parse_propstring(conf[key])
            name = net.get("name", f"eth{key[3:]}")
            ip = net.get("ip")
            if ip == "dhcp":
                ifaces += f"\nauto {name}\niface {name} inet dhcp\n"
            elif ip and ip != "manual":
                ifaces += f"\nauto {name}\niface {name} inet static\n\taddress {ip}\n"
                if net.get("gw"):
                    ifaces += f"\tgateway {net['gw']}\n"
            else:
                ifaces += f"\niface {name} inet manual\n"
        if (rootfs / "etc/network").is_dir():
            _safe_write(rootfs, "etc/network/interfaces", ifaces, uid, gid)

    def start(self, vmid: int, conf: Mapping[str, str], raw_lxc: Sequence[tuple[str, str]]) -> None:
        if self.state(vmid) == "running":
            raise RuntimeError(f"CT {vmid} already running")
        for key in sorted(k for k in conf if re.fullmatch(r"net\d+", k)):
            bridge = parse_propstring(conf[key]).get("bridge")
            if bridge and not Path("/sys/class/net", bridge).exists():
                raise RuntimeError(f"bridge '{bridge}' does not exist")
        d = self._dir(vmid)
        d.mkdir(parents=True, exist_ok=True)
        (d / "rules.seccomp").write_text(self.seccomp_rules(conf))
        (d / "config").write_text(self.lxc_config(vmid, conf, raw_lxc))
        self._prepare_rootfs(vmid, conf, raw_lxc)
        log = d / "console.log"
        startlog = d / "start.log"
        startlog.write_text("")
        r = self._lxc(
            "lxc-start", vmid, "-d", "-l", "INFO", "-o", str(startlog), "-L", str(log), timeout=120
        )
        if r.returncode == 0:
            w = self._lxc("lxc-wait", vmid, "-s", "RUNNING", "-t", "30", timeout=40)
            if w.returncode == 0 and self.state(vmid) == "running":
                return
        detail: list[str] = []
        for ln in startlog.read_text(errors="replace").splitlines():
            if " ERROR " in ln:
                msg = " - ".join(ln.split(" - ")[1:]).strip()
                if msg and msg not in detail:
                    detail.append(msg)
        raise RuntimeError("; ".join(detail[:3]) or r.stderr.strip() or "lxc-start failed")

    def stop(self, vmid: int) -> None:
        if self.state(vmid) != "running":
            return
        r = self._lxc("lxc-stop", vmid, "-k", timeout=60)
        if r.returncode != 0 and self.state(vmid) == "running":
            raise RuntimeError(f"unable to stop CT {vmid}: {r.stderr.strip()}")

    def shutdown(self, vmid: int, timeout: int) -> None:
        if self.state(vmid) != "running":
            return
        self._lxc("lxc-stop", vmid, "-t", str(timeout), timeout=timeout + 30)
        if self.state(vmid) == "running":
            self.stop(vmid)

    def state(self, vmid: int) -> str:
        if not (self._dir(vmid) / "config").exists():
            return "stopped"
        r = self._lxc("lxc-info", vmid, "-s", "-H", timeout=20)
        return (
            "running"
            if r.stdout.strip() in ("RUNNING", "STOPPING", "FREEZING", "FROZEN")
            else "stopped"
        )

    def pid(self, vmid: int) -> int | None:
        if not (self._dir(vmid) / "config").exists():
            return None
        r = self._lxc("lxc-info", vmid, "-p", "-H", timeout=20)
        out = r.stdout.strip()
        return int(out) if out.isdigit() else None

    def attach_argv(self, vmid: int, argv: Sequence[str]) -> list[str]:
        """``lxc-attach`` running ``argv`` as root in the container, with a clean env."""
        return [
            "lxc-attach", "-n", str(vmid), "-P", str(self.lxcpath), "--clear-env",
            "--set-var", f"PATH={PATH_ENV}", "--set-var", "HOME=/root",
            "--set-var", "LANG=C.UTF-8", "--", *argv,
        ]  # fmt: skip

    def exec(
        self,
        vmid: int,
        argv: Sequence[str],
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        if self.state(vmid) != "running":
            raise RuntimeError(f"CT {vmid} not running")
        cmd = self.attach_argv(vmid, argv)
        try:
            r = subprocess.run(
                cmd,
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            return ExecResult(124, e.stdout or b"", (e.stderr or b"") + b"\ntimeout\n")
        return ExecResult(r.returncode, r.stdout, r.stderr)

    def destroy(self, vmid: int) -> None:
        self.stop(vmid)
        d = self._dir(vmid)
        record = d / "rootfs.path"
        if record.exists():
            rootfs = Path(record.read_text().strip())
            if rootfs.is_dir() and rootfs.resolve().is_relative_to(self.lab_dir.resolve()):
                shutil.rmtree(rootfs, ignore_errors=True)
        shutil.rmtree(d, ignore_errors=True)

    def ip_address(self, vmid: int) -> str | None:
        if self.state(vmid) != "running":
            return None
        r = self._lxc("lxc-info", vmid, "-i", "-H", timeout=20)
        for line in r.stdout.split():
            try:
                addr = ipaddress.ip_address(line.strip())
            except ValueError:
                continue
            if addr.version != 4 or addr.is_loopback:
                continue
            if self.subnet is None or addr in self.subnet:
                return str(addr)
        return None

    def interfaces(self, vmid: int) -> list[dict[str, Any]] | None:
        """As PVE: ``ip --json a`` in the container's network namespace (entered from the
        host with ``nsenter``, not with the container's own tools); None when not running."""
        if self.state(vmid) != "running":
            return None
        r = self._lxc("lxc-info", vmid, "-p", "-H", timeout=20)
        pid = r.stdout.strip()
        if r.returncode != 0 or not pid.isdigit():
            return None
        out = subprocess.run(
            ["nsenter", "-t", pid, "--net", "--", "ip", "--json", "a"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"ip --json a in CT {vmid}: {out.stderr.strip()}")
        return pve_interfaces(json.loads(out.stdout))

    def containers(self) -> list[int]:
        """Every container this runtime has a definition for."""
        if not self.lxcpath.is_dir():
            return []
        return sorted(int(p.name) for p in self.lxcpath.iterdir() if p.name.isdigit())


def pve_interfaces(ip_json: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``ip --json a`` -> the items of PVE's ``GET .../interfaces`` (pve-container's
    ``PVE::LXC::get_interfaces``: ``inet``/``inet6`` hold the family's last address)."""
    res: list[dict[str, Any]] = []
    for iface in ip_json:
        obj: dict[str, Any] = {"name": iface.get("ifname")}
        addrs = []
        for ip in iface.get("addr_info", []):
            obj[ip["family"]] = f"{ip['local']}/{ip['prefixlen']}"
            addrs.append(
                {
                    "ip-address-type": ip["family"],
                    "ip-address": ip["local"],
                    "prefix": ip["prefixlen"],
                }
            )
        obj["ip-addresses"] = addrs
        obj["hardware-address"] = iface.get("address")
        obj["hwaddr"] = iface.get("address")
        res.append(obj)
    return res


def _decompressor(template: Path) -> list[str]:
    name = template.name
    if name.endswith(".zst"):
        return ["zstd", "-dcq"]
    if name.endswith((".gz", ".tgz")):
        return ["gzip", "-dc"]
    if name.endswith(".xz"):
        return ["xz", "-dc"]
    if name.endswith(".bz2"):
        return ["bzip2", "-dc"]
    return ["cat"]


def _cgroup_limits(conf: Mapping[str, str]) -> list[tuple[str, str]]:
    """Memory, swap, cores and cpulimit as cgroup settings (v1 controllers on the lab
    hosts; v2 when that is all there is)."""
    lines: list[tuple[str, str]] = []
    cg = Path("/sys/fs/cgroup")
    v2 = (cg / "cgroup.controllers").exists()
    memory = int(conf.get("memory", "512"))
    swap = int(conf.get("swap", "512"))
    if (cg / "memory/memory.limit_in_bytes").exists():
        lines.append(("lxc.cgroup.memory.limit_in_bytes", str(memory * 1024 * 1024)))
        if (cg / "memory/memory.memsw.limit_in_bytes").exists():
            lines.append(
                ("lxc.cgroup.memory.memsw.limit_in_bytes", str((memory + swap) * 1024 * 1024))
            )
    elif v2:
        lines.append(("lxc.cgroup2.memory.max", str(memory * 1024 * 1024)))
        lines.append(("lxc.cgroup2.memory.swap.max", str(swap * 1024 * 1024)))
    if "cores" in conf:
        n = max(1, min(int(conf["cores"]), os.cpu_count() or 1))
        cpus = f"0-{n - 1}" if n > 1 else "0"
        if (cg / "cpuset/cpuset.cpus").exists():
            lines.append(("lxc.cgroup.cpuset.cpus", cpus))
        elif v2:
            lines.append(("lxc.cgroup2.cpuset.cpus", cpus))
    if "cpulimit" in conf and float(conf["cpulimit"]) > 0:
        period = 100000
        quota = int(float(conf["cpulimit"]) * period)
        if (cg / "cpu/cpu.cfs_quota_us").exists():
            lines.append(("lxc.cgroup.cpu.cfs_period_us", str(period)))
            lines.append(("lxc.cgroup.cpu.cfs_quota_us", str(quota)))
    return lines
