"""The lab's standard templates: debian-12-standard- and debian-13-standard-like tarballs.

Built once with debootstrap (bookworm or trixie, systemd as init, ifupdown + DHCP client,
ca-certificates, curl, gnupg and what Docker's install needs), packed as
``.tar.zst`` with numeric owners (uid 0 inside, as Proxmox's templates), its
SHA-512 recorded next to it, and served over loopback HTTP so that the API's
``download-url`` really downloads it.

The Debian mirror is the one apt already uses on this machine (read from
``/etc/apt/sources.list*``; trixie comes from the same archive as this machine's
bookworm); no host name is written here.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

TEMPLATE_NAME = "debian-12-standard_12.12-1_amd64.tar.zst"
SUITE = "bookworm"
DEBIAN_13_NAME = "debian-13-standard_13.1-1_amd64.tar.zst"
PACKAGES = (
    "systemd-sysv",
    "dbus",
    "ifupdown",
    "isc-dhcp-client",
    "iproute2",
    "iputils-ping",
    "netbase",
    "ca-certificates",
    "curl",
    "wget",
    "gnupg",
    "lsb-release",
    "apt-transport-https",
    "openssh-client",
    "openssh-server",
    "procps",
    "less",
    "nano",
    "locales",
    "tzdata",
    "sudo",
    "xz-utils",
    "zstd",
)

_INTERFACES = """\
auto lo
iface lo inet loopback

auto eth0
iface eth0 inet dhcp
"""


@dataclass(frozen=True)
class Flavor:
    """One template the lab builds: its file name (PVE's ``<os>-<ver>-standard_<ver>-<rel>``
    pattern, which ``aplinfo`` names it by) and the Debian suite debootstrapped into it."""

    name: str
    suite: str
    packages: tuple[str, ...] = PACKAGES

    @property
    def appliance(self) -> str:
        """``debian-13-standard``: the name without version, release and architecture."""
        return self.name.split("_", 1)[0]

    @property
    def version(self) -> str:
        return self.name.split("_")[1]


DEBIAN_12 = Flavor(TEMPLATE_NAME, SUITE)
DEBIAN_13 = Flavor(DEBIAN_13_NAME, "trixie")
FLAVORS = (DEBIAN_12, DEBIAN_13)


@dataclass(frozen=True)
class Template:
    path: Path
    sha512: str

    @property
    def name(self) -> str:
        return self.path.name


def apt_mirror(suite: str = SUITE, root: Path = Path("/")) -> str:
    """The first Debian archive URI apt uses for ``suite`` (deb822 or one-line format)."""
    files: list[Path] = []
    main = root / "etc/apt/sources.list"
    if main.is_file():
        files.append(main)
    d = root / "etc/apt/sources.list.d"
    if d.is_dir():
        files.extend(sorted(p for p in d.iterdir() if p.suffix in (".list", ".sources")))
    for f in files:
        text = f.read_text(errors="replace")
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    m = re.match(r"^([A-Za-z-]+):\s*(.*)$", line)
                    if m:
                        fields[m.group(1).lower()] = m.group(2)
                suites = fields.get("suites", "").split()
                if "deb" in fields.get("types", "").split() and suite in suites:
                    return fields["uris"].split()[0]
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line).split()
                if len(parts) >= 3 and parts[0] == "deb" and parts[2] == suite:
                    return parts[1]
    raise RuntimeError(f"no apt source for Debian {suite} found in {root / 'etc/apt'}")


def sha512_of(path: Path) -> str:
    h = hashlib.sha512()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached(cache_dir: Path, flavor: Flavor = DEBIAN_12) -> Template | None:
    path = cache_dir / flavor.name
    sumfile = path.with_name(path.name + ".sha512")
    if path.is_file() and sumfile.is_file():
        return Template(path, sumfile.read_text().split()[0])
    return None


def _customise(rootfs: Path) -> None:
    (rootfs / "etc/hostname").write_text("localhost\n")
    (rootfs / "etc/network").mkdir(exist_ok=True)
    (rootfs / "etc/network/interfaces").write_text(_INTERFACES)
    # PVE writes resolv.conf and hostname at start; leave an empty one like its templates.
    resolv = rootfs / "etc/resolv.conf"
    if resolv.is_symlink() or resolv.exists():
        resolv.unlink()
    resolv.write_text("")
    # Host keys are generated per container on first boot (as Proxmox's templates do).
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    unit = rootfs / "etc/systemd/system/ssh-keygen-once.service"
    unit.write_text(
        "[Unit]\nDescription=Generate SSH host keys\nBefore=ssh.service\n"
        "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key\n\n"
        "[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\n\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "ssh-keygen-once.service"
    if not link.exists():
        link.symlink_to("/etc/systemd/system/ssh-keygen-once.service")
    # Units that cannot work in an unprivileged container.
    for unit_name in ("systemd-journald-audit.socket", "sys-kernel-debug.mount"):
        masked = rootfs / "etc/systemd/system" / unit_name
        if not masked.exists():
            masked.symlink_to("/dev/null")
    (rootfs / "etc/machine-id").write_text("")
    for d in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for p in (rootfs / d).glob("*"):
            if p.is_file():
                p.unlink()


def build(
    cache_dir: Path,
    *,
    mirror: str | None = None,
    force: bool = False,
    flavor: Flavor = DEBIAN_12,
) -> Template:
    """Build (or reuse) the template in ``cache_dir``; returns its path and SHA-512."""
    if not force:
        have = cached(cache_dir, flavor)
        if have is not None:
            return have
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    mirror = mirror or apt_mirror()
    with tempfile.TemporaryDirectory(prefix="template-", dir=cache_dir) as tmp:
        rootfs = Path(tmp) / "rootfs"
        log = cache_dir / f"debootstrap-{flavor.suite}.log"
        with log.open("wb") as out:
            r = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=" + ",".join(flavor.packages),
                    flavor.suite,
                    str(rootfs),
                    mirror,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if r.returncode != 0:
            raise RuntimeError(f"debootstrap failed ({r.returncode}); see {log}")
        _customise(rootfs)
        part = cache_dir / (flavor.name + ".part")
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "--xattrs", "-cf", "-", "."],
            stdout=subprocess.PIPE,
        )
        z = subprocess.run(
            ["zstd", "-q", "-T0", "-f", "-o", str(part)], stdin=tar.stdout, check=False
        )
        assert tar.stdout is not None
        tar.stdout.close()
        if tar.wait() != 0 or z.returncode != 0:
            raise RuntimeError("packing the template failed")
        path = cache_dir / flavor.name
        os.replace(part, path)
    digest = sha512_of(path)
    path.with_name(path.name + ".sha512").write_text(f"{digest}  {path.name}\n")
    return Template(path, digest)


def serve_argv(directory: Path, port: int) -> list[str]:
    """The loopback HTTP server for the template directory (run as a daemon by control)."""
    return [
        sys.executable,
        "-m",
        "http.server",
        "--bind",
        "127.0.0.1",
        "--directory",
        str(directory),
        str(port),
    ]


def flavor_named(name: str) -> Flavor:
    """A flavor by file name, appliance name (``debian-13-standard``) or suite."""
    for f in FLAVORS:
        if name in (f.name, f.appliance, f.suite):
            return f
    raise KeyError(name)


if __name__ == "__main__":  # pragma: no cover - manual use
    # python -m pvelab.runtime.template [CACHE_DIR [debian-12-standard|debian-13-standard]]
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/var/lib/pvestack-lab/cache")
    which = flavor_named(sys.argv[2]) if len(sys.argv) > 2 else DEBIAN_12
    t = build(where, flavor=which)
    print(t.path, t.sha512)
