"""The hardening suites' counts (tried / passed per part) in pytest's terminal summary."""

from __future__ import annotations

from typing import Any

from hardkit import TALLY


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("hardening suites (issue 10): tried / passed")
    for part in sorted(TALLY):
        c = TALLY[part]
        terminalreporter.write_line(f"{part}: {c['tried']} tried / {c['passed']} passed")
