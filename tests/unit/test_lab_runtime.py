"""The lab runtime's pure parts (no root): PVE config -> LXC config, seccomp for keyctl,
the subuid/subgid ledger, pct's Proxmox-style options, the apt mirror, the sshd config."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pvelab.control import export_lines
from pvelab.pct import parse_options
from pvelab.runtime import template
from pvelab.runtime.lxc import (
    IdRange,
    LxcRuntime,
    ensure_subids,
    host_id,
    idmap_ranges,
    parse_propstring,
    remove_recorded_subids,
)
from pvelab.runtime.network import LabNetwork
from pvelab.runtime.sshd import LabSshd


def _lxc_configs(tmp_path: Path) -> Path:
    """A stand-in for /usr/share/lxc/config (hermetic: no host package read)."""
    d = tmp_path / "lxc-config"
    d.mkdir(parents=True, exist_ok=True)
    for name in ("common.conf", "userns.conf", "debian.common.conf", "debian.userns.conf",
                 "nesting.conf"):  # fmt: skip
        (d / name).write_text(f"# {name}\n")
    (d / "common.seccomp").write_text("2\ndenylist\nreject_force_umount\n")
    return d


def _rt(tmp_path: Path) -> LxcRuntime:
    return LxcRuntime(
        tmp_path,
        bridge_subnet="10.77.0.0/24",
        nameserver="10.77.0.1",
        lxc_config_dir=_lxc_configs(tmp_path),
    )


BASE = {
    "arch": "amd64",
    "ostype": "debian",
    "hostname": "hermes",
    "memory": "1024",
    "swap": "512",
    "rootfs": "/lab/storage/local-lvm/images/118/vm-118-disk-0,size=8G",
    "unprivileged": "1",
}


def _lines(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        k, _, v = line.partition(" = ")
        out.append((k, v))
    return out


def test_unprivileged_default_idmap_rootfs_and_hostname(tmp_path: Path) -> None:
    conf = _lines(_rt(tmp_path).lxc_config(118, BASE, []))
    assert ("lxc.idmap", "u 0 100000 65536") in conf
    assert ("lxc.idmap", "g 0 100000 65536") in conf
    assert ("lxc.rootfs.path", "dir:/lab/storage/local-lvm/images/118/vm-118-disk-0") in conf
    assert ("lxc.uts.name", "hermes") in conf
    assert ("lxc.include", str(tmp_path / "lxc-config/debian.userns.conf")) in conf
    assert ("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed") in conf


def test_a_missing_distribution_config_is_an_error_not_a_silent_fallback(tmp_path: Path) -> None:
    rt = _rt(tmp_path)
    (tmp_path / "lxc-config/debian.common.conf").unlink()
    with pytest.raises(RuntimeError, match="lxc-templates"):
        rt.lxc_config(118, BASE, [])
    unmanaged = _lines(rt.lxc_config(118, {**BASE, "ostype": "unmanaged"}, []))
    assert ("lxc.include", str(tmp_path / "lxc-config/common.conf")) in unmanaged


def test_custom_idmap_replaces_the_default(tmp_path: Path) -> None:
    raw = [("lxc.idmap", "u 0 200000 1000"), ("lxc.idmap", "g 0 200000 1000")]
    conf = _lines(_rt(tmp_path).lxc_config(118, BASE, raw))
    idmaps = [v for k, v in conf if k == "lxc.idmap"]
    assert idmaps == ["u 0 200000 1000", "g 0 200000 1000"]


def test_privileged_has_no_idmap(tmp_path: Path) -> None:
    conf = _lines(_rt(tmp_path).lxc_config(118, {**BASE, "unprivileged": "0"}, []))
    assert not [k for k, _ in conf if k == "lxc.idmap"]


def test_nesting_means_rw_cgroup_and_nesting_conf(tmp_path: Path) -> None:
    conf = _lines(_rt(tmp_path).lxc_config(118, {**BASE, "features": "nesting=1"}, []))
    assert ("lxc.mount.auto", "proc:rw sys:rw cgroup:rw:force") in conf
    assert ("lxc.include", str(tmp_path / "lxc-config/nesting.conf")) in conf


def test_keyctl_is_enosys_unless_the_feature_is_set(tmp_path: Path) -> None:
    rt = _rt(tmp_path)
    assert "keyctl errno 38" in rt.seccomp_rules(BASE)
    assert "# keyctl: ENOSYS via seccomp (no keyctl=1)" in rt.lxc_config(118, BASE, [])
    with_keyctl = rt.lxc_config(118, {**BASE, "features": "keyctl=1"}, [])
    assert "# keyctl: allowed (keyctl=1)" in with_keyctl
    assert "keyctl" not in rt.seccomp_rules({**BASE, "features": "keyctl=1,nesting=1"})
    # privileged containers: PVE adds no keyctl rule
    assert "keyctl" not in rt.seccomp_rules({**BASE, "unprivileged": "0"})


def test_mount_points_bind_and_volume(tmp_path: Path) -> None:
    host = tmp_path / "hermes"
    host.mkdir()
    vol = tmp_path / "storage/local-lvm/images/118/vm-118-disk-1"
    vol.mkdir(parents=True)
    conf = {
        **BASE,
        "mp0": f"{host},mp=/data",
        "mp1": "local-lvm:vm-118-disk-1,mp=/srv/db,ro=1,size=4G",
    }
    entries = [v for k, v in _lines(_rt(tmp_path).lxc_config(118, conf, [])) if k.endswith("entry")]
    assert f"{host} data none bind,create=dir 0 0" in entries
    assert f"{vol} srv/db none bind,create=dir,ro 0 0" in entries


def test_missing_bind_source_fails(tmp_path: Path) -> None:
    conf = {**BASE, "mp0": f"{tmp_path}/nope,mp=/data"}
    with pytest.raises(RuntimeError, match="does not exist"):
        _rt(tmp_path).lxc_config(118, conf, [])


def test_net0_on_the_bridge(tmp_path: Path) -> None:
    conf = {**BASE, "net0": "name=eth0,bridge=pvlab0,hwaddr=BC:24:11:AA:BB:CC,ip=dhcp,type=veth"}
    lines = _lines(_rt(tmp_path).lxc_config(118, conf, []))
    assert ("lxc.net.0.type", "veth") in lines
    assert ("lxc.net.0.link", "pvlab0") in lines
    assert ("lxc.net.0.hwaddr", "BC:24:11:AA:BB:CC") in lines
    assert ("lxc.net.0.name", "eth0") in lines
    # PVE's veth<vmid>i<n>, tagged per lab (two labs may run the same vmid at once)
    pair = dict(lines)["lxc.net.0.veth.pair"]
    assert pair.startswith("veth118i0") and len(pair) == 15
    other = _lines(_rt(tmp_path / "other").lxc_config(118, conf, []))
    assert dict(other)["lxc.net.0.veth.pair"] != pair


def test_files_written_into_the_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc/network").mkdir(parents=True)
    conf = {
        **BASE,
        "rootfs": f"{rootfs},size=8G",
        "unprivileged": "0",
        "hostname": "hermes.lab",
        "nameserver": "1.1.1.1 8.8.8.8",
        "net0": "name=eth0,bridge=pvlab0,ip=10.77.0.50/24,gw=10.77.0.1",
    }
    _rt(tmp_path)._prepare_rootfs(118, conf, [])
    assert (rootfs / "etc/hostname").read_text() == "hermes\n"
    assert "127.0.1.1 hermes.lab hermes" in (rootfs / "etc/hosts").read_text()
    assert (rootfs / "etc/resolv.conf").read_text() == "nameserver 1.1.1.1\nnameserver 8.8.8.8\n"
    ifaces = (rootfs / "etc/network/interfaces").read_text()
    assert "iface eth0 inet static\n\taddress 10.77.0.50/24\n\tgateway 10.77.0.1" in ifaces
    # without a nameserver: the lab bridge's dnsmasq
    conf.pop("nameserver")
    _rt(tmp_path)._prepare_rootfs(118, conf, [])
    assert (rootfs / "etc/resolv.conf").read_text() == "nameserver 10.77.0.1\n"


def test_rootfs_files_do_not_follow_links_out(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    outside = tmp_path / "host-file"
    outside.write_text("host\n")
    (rootfs / "etc/hostname").symlink_to(outside)
    conf = {**BASE, "rootfs": str(rootfs), "unprivileged": "0"}
    _rt(tmp_path)._prepare_rootfs(118, conf, [])
    assert outside.read_text() == "host\n"
    assert (rootfs / "etc/hostname").read_text() == "hermes\n"


def test_idmap_ranges_and_host_ids() -> None:
    ranges = idmap_ranges(["u 0 100000 65536", "g 0 100000 65536"])
    assert host_id(ranges, "u", 0) == 100000
    assert host_id(ranges, "g", 1000) == 101000
    with pytest.raises(ValueError):
        host_id(ranges, "u", 70000)
    assert idmap_ranges(["b 0 200000 10"]) == [
        IdRange("u", 0, 200000, 10),
        IdRange("g", 0, 200000, 10),
    ]


def test_subid_ledger_adds_shares_and_removes(tmp_path: Path) -> None:
    etc = tmp_path
    (etc / "subuid").write_text("alice:165536:65536\n")
    (etc / "subgid").write_text("alice:165536:65536\n")
    ranges = idmap_ranges(["u 0 100000 65536", "g 0 100000 65536"])
    ensure_subids(ranges, Path("/labA/state"), etc)
    ensure_subids(ranges, Path("/labB/state"), etc)
    assert (etc / "subuid").read_text() == "alice:165536:65536\nroot:100000:65536\n"
    remove_recorded_subids(Path("/labA/state"), etc)
    assert "root:100000:65536" in (etc / "subuid").read_text()  # lab B still uses it
    remove_recorded_subids(Path("/labB/state"), etc)
    assert (etc / "subuid").read_text() == "alice:165536:65536\n"
    assert (etc / "subgid").read_text() == "alice:165536:65536\n"
    assert not (etc / "pvestack-lab-subids").exists()


def test_subid_lines_of_the_admin_are_never_removed(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("root:100000:200000\n")
    (tmp_path / "subgid").write_text("root:100000:200000\n")
    ensure_subids(idmap_ranges(["b 0 100000 65536"]), Path("/labA"), tmp_path)
    remove_recorded_subids(Path("/labA"), tmp_path)
    assert (tmp_path / "subuid").read_text() == "root:100000:200000\n"


def test_pct_options_proxmox_style() -> None:
    pos, opts = parse_options(
        ["118", "-features", "keyctl=1,nesting=1", "--mp0", "/srv/x,mp=/data", "-delete", "mp1"]
    )
    assert pos == ["118"]
    assert opts == {"features": "keyctl=1,nesting=1", "mp0": "/srv/x,mp=/data", "delete": "mp1"}
    pos, opts = parse_options(["118", "--current", "--snapshot=s1"])
    assert opts == {"current": "1", "snapshot": "s1"}


def test_apt_mirror_from_deb822_and_one_line(tmp_path: Path) -> None:
    d = tmp_path / "etc/apt/sources.list.d"
    d.mkdir(parents=True)
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://sec.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n"
    )
    assert template.apt_mirror(root=tmp_path) == "http://mirror.example/debian"
    (d / "debian.sources").unlink()
    (tmp_path / "etc/apt/sources.list").write_text(
        "# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n"
    )
    assert template.apt_mirror(root=tmp_path) == "http://other.example/debian"


def test_network_rules_are_all_tagged() -> None:
    net = LabNetwork("pvlab9", "10.79.0.0/24", Path("/nonexistent"))
    assert net.gateway == "10.79.0.1"
    rules = net.rules()
    assert all("pvestack-lab:pvlab9" in spec for _, spec in rules)
    masq = ["POSTROUTING", "-s", "10.79.0.0/24", "!", "-d", "10.79.0.0/24", "-j", "MASQUERADE"]
    assert ("nat", [*masq, "-m", "comment", "--comment", "pvestack-lab:pvlab9"]) in rules


def test_sshd_config_pct_on_path_root_by_key_only(tmp_path: Path) -> None:
    text = LabSshd(tmp_path, 2299).config_text()
    assert "ListenAddress 127.0.0.1" in text and "Port 2299" in text
    assert "PasswordAuthentication no" in text
    assert f"SetEnv PATH={tmp_path / 'bin'}:" in text


def test_propstring() -> None:
    assert parse_propstring("local-lvm:8,mp=/data", "volume") == {
        "volume": "local-lvm:8",
        "mp": "/data",
    }
    with pytest.raises(ValueError):
        parse_propstring("a=1,bare")


def test_start_on_a_missing_bridge_fails_as_pve_says(tmp_path: Path) -> None:
    conf = {**BASE, "net0": "name=eth0,bridge=nosuchbr0,ip=dhcp"}
    with pytest.raises(RuntimeError, match=r"^bridge 'nosuchbr0' does not exist$"):
        _rt(tmp_path).start(118, conf, [])


def test_export_lines_eval_in_sh(tmp_path: Path) -> None:
    text = export_lines({"PVESTACK_TOKEN_SECRET": "a'b $c", "PVESTACK_NODE": "pve"}, tmp_path)
    script = 'eval "$1"; eval "$1"; printf "%s\\n%s\\n" "$PVESTACK_TOKEN_SECRET" "$PATH"'
    out = subprocess.run(
        ["sh", "-c", script, "sh", text], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert out[0] == "a'b $c"
    assert out[1].split(":").count(str(tmp_path)) == 1
    assert out[1].startswith(f"{tmp_path}:")
