"""``pvestack verify``: the seed plan's manual checklist, as checks with evidence."""

from pvestack.verify._checks import (
    CheckResult,
    Status,
    VerifyReport,
    verify,
)

__all__ = ["CheckResult", "Status", "VerifyReport", "verify"]
