"""Shared fixtures: dev backends in subprocesses on per-test databases."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# `tests.support...` imports need the repository root on sys.path whatever the rootdir/import mode.
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from agent.devserver.process import DevServerProcess  # noqa: E402
from agent.patches import install as install_patches  # noqa: E402

DevServerFactory = Callable[..., DevServerProcess]


@pytest.fixture(scope="session", autouse=True)
def aiortc_patches() -> None:
    """The agent's changes inside aiortc and aioice, installed once, as every entry point does
    (tests/patches takes some out, and puts them back, to run the fallbacks)."""
    install_patches()


@pytest.fixture
def devserver_factory(tmp_path: Path) -> Iterator[DevServerFactory]:
    """`factory(generation=2, ids="random", db=None, **kwargs)` starts a DevServerProcess (on a
    fresh database under tmp_path unless `db` is given); all are stopped at teardown."""
    started: list[DevServerProcess] = []

    def start(
        *, generation: int = 2, ids: str = "random", db: Path | None = None, **kwargs: Any
    ) -> DevServerProcess:
        path = db if db is not None else tmp_path / f"devserver-{len(started)}.sqlite"
        server = DevServerProcess(path, generation=generation, ids=ids, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.close()


@pytest.fixture
def devserver(devserver_factory: DevServerFactory) -> DevServerProcess:
    """A generation-2, random-ID dev backend."""
    return devserver_factory()
