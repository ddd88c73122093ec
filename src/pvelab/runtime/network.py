"""The lab's network: a bridge with its own /24, dnsmasq (DHCP + DNS) on it, and NAT.

Every iptables rule the lab adds carries the comment ``pvestack-lab:<bridge>`` so that
``down`` deletes exactly those rules. The rules are inserted at the top of FORWARD, so a
Docker engine on the host (FORWARD policy DROP) keeps working and the lab works beside it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pvelab.runtime import procs

DEFAULT_BRIDGE = "pvlab0"
DEFAULT_SUBNET = "10.77.0.0/24"
FORWARD_RECORD = Path("/run/pvestack-lab/ip_forward.before")


@dataclass(frozen=True)
class LabNetwork:
    bridge: str = DEFAULT_BRIDGE
    subnet: str = DEFAULT_SUBNET
    run_dir: Path = Path("/var/lib/pvestack-lab/run")

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway(self) -> str:
        return str(next(self.network.hosts()))

    @property
    def comment(self) -> str:
        return f"pvestack-lab:{self.bridge}"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / f"dnsmasq-{self.bridge}.pid"

    @property
    def forward_record(self) -> Path:
        """ip_forward before the first lab on this machine turned it on (machine-wide: the
        last lab to go down restores it)."""
        return FORWARD_RECORD

    def rules(self) -> list[tuple[str, list[str]]]:
        """(table, rule spec) of every rule the lab adds, in insertion order."""
        net, c = self.subnet, ["-m", "comment", "--comment", self.comment]
        br = self.bridge
        return [
            ("nat", ["POSTROUTING", "-s", net, "!", "-d", net, "-j", "MASQUERADE", *c]),
            ("filter", ["FORWARD", "-i", br, "-j", "ACCEPT", *c]),
            ("filter", ["FORWARD", "-o", br, "-m", "conntrack", "--ctstate",
                        "RELATED,ESTABLISHED", "-j", "ACCEPT", *c]),
            ("filter", ["INPUT", "-i", br, "-p", "udp", "-m", "multiport", "--dports", "53,67",
                        "-j", "ACCEPT", *c]),
            ("filter", ["INPUT", "-i", br, "-p", "tcp", "--dport", "53", "-j", "ACCEPT", *c]),
        ]  # fmt: skip


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
    return r


def bridge_exists(bridge: str) -> bool:
    return Path(f"/sys/class/net/{bridge}").exists()


def _check_subnet_free(net: LabNetwork) -> None:
    out = _run(["ip", "-o", "-4", "addr", "show"]).stdout
    for line in out.splitlines():
        parts = line.split()
        dev, cidr = parts[1], parts[3]
        if dev == net.bridge:
            continue
        if ipaddress.IPv4Interface(cidr).network.overlaps(net.network):
            raise RuntimeError(f"subnet {net.subnet} overlaps {cidr} on {dev}")


def _rule_present(table: str, spec: list[str]) -> bool:
    return _run(["iptables", "-w", "-t", table, "-C", *spec], check=False).returncode == 0


def up(net: LabNetwork) -> None:
    """Create the bridge, start dnsmasq, add NAT/forward rules (idempotent)."""
    net.run_dir.mkdir(parents=True, exist_ok=True)
    if not bridge_exists(net.bridge):
        _check_subnet_free(net)
        _run(["ip", "link", "add", net.bridge, "type", "bridge"])
    addr = f"{net.gateway}/{net.network.prefixlen}"
    have = _run(["ip", "-o", "-4", "addr", "show", "dev", net.bridge]).stdout
    if addr not in have:
        _run(["ip", "addr", "add", addr, "dev", net.bridge])
    _run(["ip", "link", "set", net.bridge, "up"])
    info = {"bridge": net.bridge, "subnet": net.subnet, "gateway": net.gateway}
    (net.run_dir / "network.json").write_text(json.dumps(info) + "\n")
    fwd = Path("/proc/sys/net/ipv4/ip_forward")
    if not net.forward_record.exists():
        net.forward_record.parent.mkdir(parents=True, exist_ok=True)
        net.forward_record.write_text(fwd.read_text())
    fwd.write_text("1\n")
    for table, spec in net.rules():
        if not _rule_present(table, spec):
            chain, rest = spec[0], spec[1:]
            _run(["iptables", "-w", "-t", table, "-I", chain, "1", *rest])
    if procs.running(net.pidfile, "dnsmasq") is None:
        hosts = list(net.network.hosts())
        argv = [
            "dnsmasq",
            "--conf-file=/dev/null",
            "--keep-in-foreground",
            "--strict-order",
            "--bind-interfaces",
            f"--listen-address={net.gateway}",
            f"--interface={net.bridge}",
            "--except-interface=lo",
            f"--dhcp-range={hosts[1]},{hosts[-1]},12h",
            f"--dhcp-lease-max={len(hosts) - 1}",
            f"--dhcp-leasefile={net.run_dir / f'dnsmasq-{net.bridge}.leases'}",
            "--dhcp-no-override",
            "--dhcp-authoritative",
            f"--pid-file={net.run_dir / f'dnsmasq-{net.bridge}.ownpid'}",
        ]
        procs.spawn(argv, net.pidfile, net.run_dir / f"dnsmasq-{net.bridge}.log")
        if not procs.wait_port(net.gateway, 53, 5):
            raise RuntimeError("dnsmasq did not start; see " + str(net.run_dir))


def lab_rules() -> list[tuple[str, str]]:
    """Every iptables rule (table, ``-A`` line) tagged by any lab bridge."""
    out: list[tuple[str, str]] = []
    for table in ("filter", "nat"):
        for line in _run(["iptables", "-w", "-t", table, "-S"]).stdout.splitlines():
            if "pvestack-lab:" in line and line.startswith("-A "):
                out.append((table, line))
    return out


def down(net: LabNetwork) -> None:
    """Remove exactly what ``up`` made: dnsmasq (by pid), the tagged rules, the bridge."""
    procs.stop(net.pidfile, "dnsmasq")
    for table, spec in net.rules():
        while _rule_present(table, spec):
            _run(["iptables", "-w", "-t", table, "-D", *spec])
    if bridge_exists(net.bridge):
        _run(["ip", "link", "del", net.bridge])
    if net.forward_record.exists() and not lab_rules():
        # the last lab on this machine (no other lab's rules left) restores forwarding
        Path("/proc/sys/net/ipv4/ip_forward").write_text(net.forward_record.read_text())
        net.forward_record.unlink()
        with contextlib.suppress(OSError):
            net.forward_record.parent.rmdir()
    (net.run_dir / "network.json").unlink(missing_ok=True)
    for suffix in ("leases", "log", "ownpid"):
        (net.run_dir / f"dnsmasq-{net.bridge}.{suffix}").unlink(missing_ok=True)


def status(net: LabNetwork) -> dict[str, object]:
    return {
        "bridge": net.bridge,
        "bridge_up": bridge_exists(net.bridge),
        "subnet": net.subnet,
        "dnsmasq_pid": procs.running(net.pidfile, "dnsmasq"),
        "rules": sum(1 for t, s in net.rules() if _rule_present(t, s)),
    }
