"""Installing the patches: nothing at import, everything from one call, idempotent, selectable."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import aioice.ice
import aiortc.rtcdtlstransport
import aiortc.rtcpeerconnection
import aiortc.rtcrtpreceiver
import aiortc.rtcrtpsender
import pytest

import agent.patches
from agent.patches import PATCHES, install, installed, uninstall

ROOT = Path(__file__).resolve().parents[2]

# The module and class attributes the patches replace for the whole process.
TARGETS = {
    "aioice.ice.get_host_addresses": (aioice.ice, "get_host_addresses"),
    "aioice.ice.Connection.get_component_candidates": (
        aioice.ice.Connection,
        "get_component_candidates",
    ),
    "aiortc.rtcpeerconnection.find_common_codecs": (aiortc.rtcpeerconnection, "find_common_codecs"),
    "aiortc.rtcpeerconnection.add_remote_candidates": (
        aiortc.rtcpeerconnection,
        "add_remote_candidates",
    ),
    "aiortc.rtcpeerconnection.asyncio": (aiortc.rtcpeerconnection, "asyncio"),
    "aiortc.rtcpeerconnection.RTCCertificate": (aiortc.rtcpeerconnection, "RTCCertificate"),
    "aiortc.rtcrtpsender.RTCRtpSender._run_rtp": (aiortc.rtcrtpsender.RTCRtpSender, "_run_rtp"),
    "aiortc.rtcrtpreceiver.threading": (aiortc.rtcrtpreceiver, "threading"),
    "aiortc.rtcrtpsender.RTCRtpSender._handle_rtcp_packet": (
        aiortc.rtcrtpsender.RTCRtpSender,
        "_handle_rtcp_packet",
    ),
    "aiortc.rtcdtlstransport.RTCDtlsTransport._send_rtp": (
        aiortc.rtcdtlstransport.RTCDtlsTransport,
        "_send_rtp",
    ),
}


def snapshot() -> dict[str, Any]:
    return {name: owner.__dict__[attr] for name, (owner, attr) in TARGETS.items()}


# Run in a fresh interpreter: snapshot aiortc and aioice before anything of the agent is
# imported, import every module of the agent, compare; then install twice, then uninstall.
# Prints one JSON object.
FRESH_PROCESS = """
import importlib, json, pkgutil, sys
targets = json.loads(sys.argv[1])

def snapshot():
    values = {}
    for name in targets:
        owner_path, attr = name.rsplit(".", 1)
        module_path, _, cls = owner_path.partition(":")
        owner = importlib.import_module(module_path)
        if cls:
            owner = getattr(owner, cls)
        values[name] = owner.__dict__[attr]
    return values

before = snapshot()
assert not any(m == "agent" or m.startswith("agent.") for m in sys.modules)
import agent
failed = []
for info in pkgutil.walk_packages(agent.__path__, "agent."):
    if info.name == "agent.__main__":
        continue  # runs the CLI
    try:
        importlib.import_module(info.name)
    except ImportError as exc:  # a module of an extra that is not installed
        failed.append(f"{info.name}: {exc}")
import agent.patches as patches
after_import = snapshot()
installed_at_import = sorted(patches.installed())
first = sorted(patches.install())
after_install = snapshot()
second = sorted(patches.install())
after_second = snapshot()
patches.uninstall()
after_uninstall = snapshot()
print(json.dumps({
    "imported": sorted(m for m in sys.modules if m.startswith("agent.")),
    "import_failures": failed,
    "changed_at_import": [n for n in targets if after_import[n] is not before[n]],
    "installed_at_import": installed_at_import,
    "first": first,
    "second": second,
    "changed_by_install": [n for n in targets if after_install[n] is not before[n]],
    "changed_by_second_install": [n for n in targets if after_second[n] is not after_install[n]],
    "left_after_uninstall": [n for n in targets if after_uninstall[n] is not before[n]],
}))
"""

# The same targets, as the fresh process finds them: "module:Class.attribute" or "module.attribute"
TARGET_PATHS = {
    "aioice.ice.get_host_addresses": "aioice.ice.get_host_addresses",
    "aioice.ice.Connection.get_component_candidates": (
        "aioice.ice:Connection.get_component_candidates"
    ),
    "aiortc.rtcpeerconnection.find_common_codecs": "aiortc.rtcpeerconnection.find_common_codecs",
    "aiortc.rtcpeerconnection.add_remote_candidates": (
        "aiortc.rtcpeerconnection.add_remote_candidates"
    ),
    "aiortc.rtcpeerconnection.asyncio": "aiortc.rtcpeerconnection.asyncio",
    "aiortc.rtcpeerconnection.RTCCertificate": "aiortc.rtcpeerconnection.RTCCertificate",
    "aiortc.rtcrtpsender.RTCRtpSender._run_rtp": "aiortc.rtcrtpsender:RTCRtpSender._run_rtp",
    "aiortc.rtcrtpreceiver.threading": "aiortc.rtcrtpreceiver.threading",
    "aiortc.rtcrtpsender.RTCRtpSender._handle_rtcp_packet": (
        "aiortc.rtcrtpsender:RTCRtpSender._handle_rtcp_packet"
    ),
    "aiortc.rtcdtlstransport.RTCDtlsTransport._send_rtp": (
        "aiortc.rtcdtlstransport:RTCDtlsTransport._send_rtp"
    ),
}


def test_importing_the_agent_changes_nothing_and_install_changes_it_once() -> None:
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, json.dumps(list(TARGET_PATHS.values()))],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["import_failures"] == []
    assert {"agent.peer.session", "agent.media.packet_pump", "agent.roles.run"} <= set(
        report["imported"]
    )
    assert report["changed_at_import"] == []
    assert report["installed_at_import"] == []
    assert report["first"] == report["second"] == sorted(PATCHES)
    # every process-wide target but RTCCertificate (replaced only inside new_peer_connection)
    assert sorted(report["changed_by_install"]) == sorted(
        TARGET_PATHS[n] for n in TARGETS if n != "aiortc.rtcpeerconnection.RTCCertificate"
    )
    assert report["changed_by_second_install"] == []
    assert report["left_after_uninstall"] == []


def test_the_suite_runs_with_every_patch_installed() -> None:
    """tests/conftest.py installs them, as every entry point does."""
    assert installed() == frozenset(PATCHES)


def test_installing_again_changes_nothing() -> None:
    before = snapshot()
    assert install() == frozenset(PATCHES)
    assert install(only={"packet_pump"}) == frozenset(PATCHES)
    assert snapshot() == before


def test_skip_and_only_choose_patches(patches_restored: None) -> None:
    uninstall()
    pristine = snapshot()
    assert installed() == frozenset()
    assert install(skip={"packet_pump", "remote_descriptions"}) == frozenset(PATCHES) - {
        "packet_pump",
        "remote_descriptions",
    }
    now = snapshot()
    assert (
        now["aiortc.rtcrtpsender.RTCRtpSender._run_rtp"]
        is pristine["aiortc.rtcrtpsender.RTCRtpSender._run_rtp"]
    )
    assert (
        now["aiortc.rtcpeerconnection.find_common_codecs"]
        is pristine["aiortc.rtcpeerconnection.find_common_codecs"]
    )
    assert now["aioice.ice.get_host_addresses"] is not pristine["aioice.ice.get_host_addresses"]
    assert install(only="packet_pump") == frozenset(PATCHES) - {"remote_descriptions"}
    uninstall(["packet_pump"])
    assert "packet_pump" not in installed()
    assert (
        snapshot()["aiortc.rtcrtpsender.RTCRtpSender._run_rtp"]
        is pristine["aiortc.rtcrtpsender.RTCRtpSender._run_rtp"]
    )
    with pytest.raises(ValueError, match="unknown patch: no_such_patch"):
        install(skip={"no_such_patch"})
    with pytest.raises(ValueError, match="unknown patch"):
        install(only={"packet_pumps"})


def test_a_patch_whose_internals_moved_is_left_out_with_one_warning(
    patches_restored: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    uninstall(["ice_host_addresses"])
    monkeypatch.delattr(aioice.ice, "get_host_addresses")  # as if aioice had renamed it
    with caplog.at_level(logging.WARNING, logger="agent.patches"):
        assert "ice_host_addresses" not in install()
        assert "ice_host_addresses" not in install()  # not tried again
    warnings = [r.getMessage() for r in caplog.records if "ice_host_addresses" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "get_host_addresses" in warnings[0] and "every interface" in warnings[0]
    assert PATCHES["ice_host_addresses"].declined is not None
    monkeypatch.undo()
    uninstall(["ice_host_addresses"])  # forgets the refusal
    assert "ice_host_addresses" in install()


def test_the_package_docstring_lists_every_patch() -> None:
    doc = agent.patches.__doc__ or ""
    for name, patch in PATCHES.items():
        assert f"**`{name}`**" in doc, name
        assert patch.why and patch.fallback and patch.replaces, name
        for library in patch.libraries:
            assert f"{library} {agent.patches.VERIFIED_VERSIONS[library]}" in doc
