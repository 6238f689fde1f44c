"""agent/extras.py's table of extras matches pyproject.toml: a command checks for the modules that
its extra really installs."""

from __future__ import annotations

from importlib import metadata

import pytest
from packaging.utils import canonicalize_name

from agent.extras import EXTRAS
from tests.install.wheelhouse import declared


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_each_module_comes_from_its_extra_and_each_distribution_is_checked(extra: str) -> None:
    base = {canonicalize_name(r.name) for r in declared()}
    wanted = {canonicalize_name(r.name) for r in declared((extra,))} - base
    providers = metadata.packages_distributions()
    checked = {canonicalize_name(d) for m in EXTRAS[extra] for d in providers.get(m, [])}
    assert checked == wanted
