"""Lab tests: root + real LXC. Each lab here has its own directory, bridge, subnet and
ports, so a lab a developer runs (``pvestack lab up``) is left alone; ``down`` at the end."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from labkit import Api, host_tmpdir, running_lab, skip_reason

from pvelab.control import Lab

pytestmark = pytest.mark.lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = skip_reason()
    for item in items:
        if "tests/lab/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.lab)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if skip_reason():
        pytest.skip(skip_reason() or "")
    with running_lab("pvestack-labtest-", 1) as lab:
        yield lab


@pytest.fixture
def host_dir() -> Iterator[Path]:
    d = host_tmpdir("pvestack-labdata-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def env(lab: Lab) -> dict[str, str]:
    return lab.env()


@pytest.fixture(scope="module")
def api(lab: Lab, env: dict[str, str]) -> Api:
    return Api(env, lab.dir / "etc/pve/local/pve-ssl.pem")
