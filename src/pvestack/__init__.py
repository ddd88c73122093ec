"""pvestack: Docker app stacks in unprivileged Proxmox VE LXC containers, from one file."""

from pvestack._errors import (
    ConfigError,
    GuestKeyRefused,
    HostKeyError,
    OwnershipError,
    PreconditionError,
    Problem,
    PveAuthError,
    PveError,
    PveNotFoundError,
    PveParamError,
    PvePermissionError,
    PvestackError,
    PveTaskError,
    ReplacementRequired,
    RootStepError,
    SecretError,
    TlsError,
    TransportError,
    WaitTimeout,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GuestKeyRefused",
    "HostKeyError",
    "OwnershipError",
    "PreconditionError",
    "Problem",
    "PveAuthError",
    "PveError",
    "PveNotFoundError",
    "PveParamError",
    "PvePermissionError",
    "PveTaskError",
    "PvestackError",
    "ReplacementRequired",
    "RootStepError",
    "SecretError",
    "TlsError",
    "TransportError",
    "WaitTimeout",
    "__version__",
]
