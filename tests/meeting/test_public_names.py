"""The package's face: every public name resolves, is documented, and `import agent` stays cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import agent

API_PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def test_every_public_name_resolves_and_is_on_the_api_page() -> None:
    page = API_PAGE.read_text(encoding="utf-8")
    for name in agent.__all__:
        assert getattr(agent, name) is not None
        assert f"`{name}" in page or f"agent.{name}" in page, f"{name} is not on docs/api.md"


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        agent.no_such_name  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("agent.no_such_name resolved")


def test_importing_the_package_loads_no_media_stack() -> None:
    heavy = "('aiortc', 'av', 'pydantic')"
    code = f"import sys, agent; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
