"""``pvestack verify``: the seed plan's manual checklist, as checks with evidence.

One module per area: ``_container`` (the CT, its mounts, Docker, the compose
containers), ``_hermes``, ``_litellm``, ``_secrets``; ``_core`` holds the shared values
and doors, ``_run`` the order and the dependencies.
"""

from pvestack.verify._container import RUNC_FIX, RUNC_SYSCTL_ERROR, docker_fix
from pvestack.verify._core import CheckResult, HttpAnswer, Status, VerifyReport, http_request
from pvestack.verify._run import verify

__all__ = [
    "RUNC_FIX",
    "RUNC_SYSCTL_ERROR",
    "CheckResult",
    "HttpAnswer",
    "Status",
    "VerifyReport",
    "docker_fix",
    "http_request",
    "verify",
]
