"""Pure parts of day two: snapshot names, interface addresses, vzdump notes templates and
which mount points a snapshot or backup holds (PVE's rules)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from pvelab.backend import snapshots, vzdump
from pvelab.backend.errors import PveError
from pvestack import _daytwo as daytwo


def test_snapshot_names_are_utc_and_recognised() -> None:
    local = datetime(2026, 12, 2, 6, 30, 5, tzinfo=timezone(timedelta(hours=2)))
    name = daytwo.snapshot_name(local)
    assert name == "pvestack-20261202T043005Z"
    assert daytwo._OURS.match(name) and not daytwo._OURS.match("pvestack-manual")


def test_interface_addresses_skip_loopback_and_link_local() -> None:
    rows = [
        {"name": "lo", "inet": "127.0.0.1/8"},
        {"name": "eth0", "hwaddr": "bc:24:11:00:00:01", "ip-addresses": [
            {"ip-address-type": "inet", "ip-address": "10.77.0.5", "prefix": 24},
            {"ip-address-type": "inet6", "ip-address": "fe80::1", "prefix": 64},
            {"ip-address-type": "inet6", "ip-address": "fd00::5", "prefix": 64}]},
        {"name": "eth1", "inet": "192.0.2.7/24"},  # an older answer: no ip-addresses list
    ]  # fmt: skip
    assert daytwo.interface_addresses(rows) == ("10.77.0.5/24", "fd00::5/64", "192.0.2.7/24")
    assert daytwo.interface_addresses(None) == ()


def test_notes_template_is_checked_and_rendered_as_pve_does() -> None:
    with pytest.raises(PveError) as e:
        vzdump.verify_notes_template("a\\x {{foo}} {{vmid}}")
    assert e.value.errors == {
        "notes-template": "found unknown: escape sequence '\\x' at char 1, variable 'foo' at char 8"
    }
    with pytest.raises(PveError):
        vzdump.verify_notes_template("two\nlines")
    vzdump.verify_notes_template("{{guestname}}\\n{{vmid}} on {{node}} ({{cluster}})")
    info = {"guestname": "hermes", "vmid": "118", "node": "pve", "cluster": "standalone node"}
    assert vzdump.render_notes("{{guestname}}\\n{{vmid}} \\\\ {{node}}", info) == (
        "hermes\n118 \\ pve"
    )


def test_what_a_backup_holds() -> None:
    assert snapshots.backup_enabled("rootfs", "local-lvm:vm-1-disk-0,size=4G")
    assert snapshots.backup_enabled("mp0", "local-lvm:vm-1-disk-1,mp=/data,backup=1")
    assert not snapshots.backup_enabled("mp0", "local-lvm:vm-1-disk-1,mp=/data")
    assert not snapshots.backup_enabled("mp1", "/srv/hermes,mp=/data,backup=1")  # bind
    opts = {"rootfs": "local-lvm:vm-1-disk-0,size=4G", "mp0": "/srv/x,mp=/x",
            "mp1": "local-lvm:vm-1-disk-1,mp=/y", "memory": "512"}  # fmt: skip
    assert snapshots.snapshot_volumes(opts) == ["local-lvm:vm-1-disk-0", "local-lvm:vm-1-disk-1"]
    assert snapshots.snapshot_volumes(opts, backup_only=True) == ["local-lvm:vm-1-disk-0"]
