"""Module-scoped dev backends: tests in a module share one server and use their own meetings."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from agent.devserver.process import DevServerProcess


@pytest.fixture(scope="module")
def server2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServerProcess]:
    """Generation 2, random IDs, function errors answered 200 (the default), shared by a module."""
    with DevServerProcess(tmp_path_factory.mktemp("gen2") / "db.sqlite", generation=2) as srv:
        yield srv


@pytest.fixture(scope="module")
def server1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServerProcess]:
    """Generation 1, random IDs, function errors answered 200 (the default), shared by a module."""
    with DevServerProcess(tmp_path_factory.mktemp("gen1") / "db.sqlite", generation=1) as srv:
        yield srv


@pytest.fixture(scope="module", params=[400, 560])
def server_other_status(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DevServerProcess]:
    """Generation 2 with `--error-status 400`, then `560` (the statuses other than the default)."""
    path = tmp_path_factory.mktemp(f"status{request.param}") / "db.sqlite"
    with DevServerProcess(path, error_status=request.param) as srv:
        yield srv


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0) as client:
        yield client
