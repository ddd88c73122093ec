"""Shared test helpers: the example stack file and a desired state built from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pvestack._config import StackFile, parse_config
from pvestack._desired import build_desired
from pvestack._model import DesiredState

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "hermes.toml"
SCHEMA_FILE = ROOT / "src" / "pvelab" / "data" / "apidata-subset.json"


def example_text() -> str:
    return EXAMPLE.read_text()


def load_example(text: str | None = None, **overrides: str) -> StackFile:
    return parse_config(text or example_text(), str(EXAMPLE), env={}, overrides=overrides)


def desired_from(text: str | None = None, **overrides: str) -> DesiredState:
    return build_desired(load_example(text, **overrides), with_apps=False, env={})


@pytest.fixture
def example_cfg() -> StackFile:
    return load_example()


@pytest.fixture
def example_desired() -> DesiredState:
    return desired_from()


@pytest.fixture
def make_desired() -> object:
    """``make_desired(text=None, **overrides)`` -> DesiredState from a variant of the example."""
    return desired_from


@pytest.fixture(name="example_text")
def example_text_fixture() -> str:
    return example_text()
