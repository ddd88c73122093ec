"""The example stack file as test data (importable by any test: tests/ is on sys.path
through tests/conftest.py; a plain module name, never `conftest`, which is ambiguous when
pytest collects several test directories at once)."""

from __future__ import annotations

from pathlib import Path

from pvestack._config import StackFile, parse_config
from pvestack._desired import build_desired
from pvestack._model import DesiredState

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hermes.toml"


def example_text() -> str:
    return EXAMPLE.read_text()


def load_example(text: str | None = None, **overrides: str) -> StackFile:
    return parse_config(text or example_text(), str(EXAMPLE), env={}, overrides=overrides)


def desired_from(text: str | None = None, **overrides: str) -> DesiredState:
    return build_desired(load_example(text, **overrides), with_apps=False, env={})
