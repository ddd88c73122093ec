"""The lab's HTTP-free PVE node: state on disk, PVE's config format, schema validation,
permissions, tasks and PVE's errors. The API server and ``pct`` both use ``Node``."""

from pvestack.lab.backend.auth import AuthStore, Identity
from pvestack.lab.backend.errors import PveError
from pvestack.lab.backend.node import Node, lab_dir_from_env

__all__ = ["AuthStore", "Identity", "Node", "PveError", "lab_dir_from_env"]
