"""The installed aiortc, aioice, av and pylibsrtp are those agent/patches was checked against.

A new version may have moved any internal a patch reaches into. When this fails: read every patch
in agent/patches against the new version (each one's `replaces` names what it touches), run
tests/patches and the media and negotiation tests, then update VERIFIED_VERSIONS (and the
versions listed in agent/patches/__init__.py).
"""

from __future__ import annotations

import importlib.metadata

import pytest

from agent.patches import PATCHES, VERIFIED_VERSIONS, version_mismatches


@pytest.mark.parametrize("library", sorted(VERIFIED_VERSIONS))
def test_the_installed_version_is_the_verified_one(library: str) -> None:
    verified = VERIFIED_VERSIONS[library]
    try:
        found = importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{library} is not installed; agent/patches was checked against {verified}")
    assert found == verified, (
        f"{library} {found} is installed, but agent/patches was checked against {library} "
        f"{verified}: check every patch against {found} (see this test's docstring), then update "
        "agent.patches.VERIFIED_VERSIONS"
    )


def test_version_mismatches_reports_nothing_on_the_verified_versions() -> None:
    assert version_mismatches() == {}


def test_every_patch_names_the_versions_it_was_checked_against() -> None:
    for patch in PATCHES.values():
        assert patch.libraries, patch.name
        assert set(patch.libraries) <= set(VERIFIED_VERSIONS), patch.name
        for library in patch.libraries:
            assert f"{library} {VERIFIED_VERSIONS[library]}" in patch.checked_against
