"""`connvo-agent load --network PROFILE`: the participants on the two sides of an impaired link.

A real run (a real process, the dev backend over HTTP, workers in the link's namespaces) needs
root over a user namespace: the suite runs under scripts/isolated.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.network import PROFILE_NAMES
from agent.roles.load.plan import LoadPlan, PlanError
from agent.roles.load.runner import run_and_write

RUN_TIMEOUT_S = 120


def load(
    server: Any, report: Path, *args: str, url: str | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [
        *(sys.executable, "-m", "agent", "load", "--url", url or server.url),
        *("--report", str(report), "--ramp", "20", "--admin-key", server.admin_key),
        *("--meetings", "1", "--peers-per-meeting", "2", "--duration", "1"),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def test_a_mesh_run_across_a_mobile_link(devserver: Any, tmp_path: Path) -> None:
    # One meeting of three, alternately on sides A, B, A: two connections cross the link, one
    # stays on side A.
    args = ["--meetings", "1", "--peers-per-meeting", "3", "--duration", "5", "--procs", "2"]
    result = load(devserver, tmp_path / "r", *args, "--network", "mobile")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "network mobile: 2/3 connections across the link" in result.stdout, result.stdout
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    s = report["summary"]
    print(result.stdout, s["time_to_connected_s"], s["join_s"])
    assert s["participants"] == s["joined"] == 3
    assert s["sessions_connected"] == s["sessions_expected"] == 6
    network = report["network"]
    assert network["profile"] == "mobile" and report["plan"]["network"] == "mobile"
    assert network["impairment"]["a_to_b"] == "3 % loss, 80±30 ms, 1 Mbit/s"
    assert sorted(network["participants"].values()) == ["a", "a", "b"]
    assert network["workers"] == {"a": 1, "b": 1}
    assert network["connections_crossing"] == {"crossing": 2, "total": 3}
    assert network["backend_connections"] > 0
    # report.html shows the section: the profile, the sides, what crossed the link
    page = (tmp_path / "r" / "report.html").read_text()
    section = page[page.index("<h2>Network</h2>") :]
    assert "mobile" in section and "2 of 3" in section and "a_to_b" in section
    # The media crossed the link both ways: two seconds and more of audio each way per connection
    # that crosses it (50 packets a second), on top of ICE and DTLS.
    for lane in ("a_to_b", "b_to_a"):
        assert network["link"][lane]["sent"] > 2 * 2 * 50, network["link"]
    # The connections that cross the link see its delay (a round trip of 160 ms on average), the
    # one inside side A none to speak of (RTTs known by the end: from RTCP, once a second).
    rtts = [x["rtt_ms"] for p in report["participants"] for x in p["sessions"] if x["rtt_ms"]]
    assert min(rtts) < 50 and max(rtts) > 100, rtts


def test_a_star_run_puts_the_hub_alone_on_side_a(devserver: Any, tmp_path: Path) -> None:
    args = ["--meetings", "1", "--peers-per-meeting", "3", "--duration", "4", "--media", "none"]
    result = load(devserver, tmp_path / "r", *args, "--topology", "star", "--network", "wifi")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["summary"]["sessions_connected"] == 4
    sides = report["network"]["participants"]
    assert [sides[name] for name in sorted(sides)] == ["a", "b", "b"]  # load-s0-m0-p0 hosts
    assert report["network"]["connections_crossing"] == {"crossing": 2, "total": 2}


@pytest.mark.parametrize(
    ("url", "flags", "said"),
    [
        (
            None,
            ["--network", "lte"],
            "unknown profile 'lte'; choose one of good, wifi, mobile, bad",
        ),
        (None, ["--network", "mobile", "--ice-host", "127.0.0.1"], "drop --ice-host"),
        ("http://backend.example:3210", ["--network", "bad"], "IPv4 address or localhost"),
    ],
)
def test_bad_network_flags_get_one_line(
    devserver: Any, tmp_path: Path, url: str | None, flags: list[str], said: str
) -> None:
    assert ", ".join(PROFILE_NAMES) == "good, wifi, mobile, bad"
    result = load(devserver, tmp_path / "r", *flags, url=url)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], result.stderr


async def test_without_the_privilege_one_line_before_anything_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse() -> int:
        raise PermissionError(1, "unshare(CLONE_NEWNET): Operation not permitted")

    monkeypatch.setattr("agent.network._ns.create", refuse)
    plan = LoadPlan(
        url="http://127.0.0.1:9",  # nothing listens: provisioning would fail otherwise
        meetings=1,
        peers_per_meeting=2,
        duration=1,
        report_dir=tmp_path / "r",
        admin_key="unused",
        network="mobile",
    )
    with pytest.raises(PlanError, match="--network: cannot create a network namespace") as caught:
        await run_and_write(plan)
    assert "\n" not in str(caught.value) and "run as root" in str(caught.value)
