"""pvelab: a Proxmox VE node emulated on this machine, on real unprivileged LXC.

A product of its own beside ``pvestack``: its API answers like a PVE node (schema,
permissions, error strings, tasks), its containers are real LXC, root reaches it over
SSH with ``pct``. It imports nothing of the deployer; ``pvestack lab ...`` wires it in.
"""
