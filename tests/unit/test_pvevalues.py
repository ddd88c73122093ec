"""The one parser of PVE value formats."""

from __future__ import annotations

from pvestack._pvevalues import (
    format_features,
    idmap_lines,
    mount_props,
    parse_features,
    parse_tags,
    size_gb,
    split_props,
)


def test_property_strings() -> None:
    assert split_props("name=eth0,bridge=vmbr0,ip=dhcp") == {
        "name": "eth0",
        "bridge": "vmbr0",
        "ip": "dhcp",
    }
    assert mount_props("/mnt/pve/hdd/hermes,mp=/data,ro=1") == {
        "volume": "/mnt/pve/hdd/hermes",
        "mp": "/data",
        "ro": "1",
    }
    assert mount_props("local-lvm:vm-118-disk-0,size=24G")["volume"] == "local-lvm:vm-118-disk-0"


def test_features_round_trip_and_off_flags_dropped() -> None:
    assert parse_features("nesting=1,keyctl=0,fuse=1") == {"nesting": "1", "fuse": "1"}
    assert format_features({"nesting": "1", "keyctl": "1"}) == "keyctl=1,nesting=1"
    assert parse_features(None) == {}


def test_tags_any_separator_sorted_lower_case() -> None:
    assert parse_tags("AI;pvestack,agent backup") == ("agent", "ai", "backup", "pvestack")
    assert parse_tags(None) == ()


def test_sizes_in_gib() -> None:
    assert size_gb("local-lvm:vm-118-disk-0,size=24G") == 24
    assert size_gb("x,size=512M") == 0.5
    assert size_gb("x,size=1T") == 1024
    assert size_gb("local:subvol") is None


def test_idmap_lines_from_the_api_config() -> None:
    cfg = {"lxc": "[['lxc.idmap', 'u 0 100000 65536'], ['lxc.idmap', 'g 0  100000 65536']]"}
    assert idmap_lines(cfg) == ("u 0 100000 65536", "g 0 100000 65536")
    assert idmap_lines({}) == ()
