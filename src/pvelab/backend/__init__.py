"""The lab's HTTP-free PVE node: state on disk, PVE's config format, schema validation,
permissions, tasks and PVE's errors. The API server and ``pct`` both use ``Node``."""

from pvelab.backend.auth import AuthStore, Identity
from pvelab.backend.errors import PveError
from pvelab.backend.node import Node, lab_dir_from_env

__all__ = ["AuthStore", "Identity", "Node", "PveError", "lab_dir_from_env"]
