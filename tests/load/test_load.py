"""`connvo-agent load` and `report merge` as real processes against the dev backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

RUN_TIMEOUT_S = 120
SMALL_RUN = ["--meetings", "1", "--peers-per-meeting", "2", "--duration", "1"]


def load(
    server: Any, report: Path, *args: str, key: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "agent",
        "load",
        "--url",
        server.url,
        "--report",
        str(report),
        "--ice-host",
        "127.0.0.1",
        "--ramp",
        "20",
        *args,
    ]
    if key:
        cmd += ["--admin-key", server.admin_key]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def summary(report: Path) -> dict[str, Any]:
    return json.loads((report / "report.json").read_text())["summary"]


@pytest.mark.parametrize(
    ("topology", "media", "meetings", "peers", "expected"),
    [
        ("mesh", "preencoded", 2, 3, 12),  # 2 meetings x 3 x 2 ends
        ("star", "full", 1, 4, 6),  # hub <-> 3 spokes, both ends
        ("mesh", "none", 1, 2, 2),
    ],
)
def test_load_connects_everyone(
    devserver, tmp_path: Path, topology, media, meetings, peers, expected
) -> None:
    result = load(
        devserver,
        tmp_path / "r",
        "--meetings",
        str(meetings),
        "--peers-per-meeting",
        str(peers),
        "--duration",
        "2",
        "--topology",
        topology,
        "--media",
        media,
        "--procs",
        "2",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    s = summary(tmp_path / "r")
    assert s["participants"] == s["joined"] == meetings * peers
    assert s["sessions_expected"] == expected
    assert s["sessions_connected"] == expected
    assert s["time_to_connected_s"]["p50"] is not None
    if media != "none":
        assert s["peak_packets_per_s"] > 0 and s["packet_loss_pct"] is not None
    # event-loop lag: the probes behind each second's p99 are counted, for a whole-run p99
    timeline = json.loads((tmp_path / "r" / "report.json").read_text())["timeline"]
    assert sum(row["loop_lag_probes"] for row in timeline) > 0
    assert s["loop_lag_slow_pct"] is not None and 0 <= s["loop_lag_slow_pct"] <= 100
    # the two workers' CPU, summed per second: they connected and sent media, so some, and at
    # most two cores' worth
    busy = [row["cpu_pct"] for row in timeline]
    assert max(busy) > 0 and all(0 <= c <= 200 * 1.1 for c in busy), busy
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.count("<svg") == 9 and "Time to connected" in html
    assert devserver.admin_key not in result.stdout + result.stderr + html


def test_shards_use_distinct_identities_and_merge(devserver, tmp_path: Path) -> None:
    for shard in ("0/2", "1/2"):
        result = load(
            devserver,
            tmp_path / shard.replace("/", "-"),
            *SMALL_RUN,
            "--shard",
            shard,
        )
        assert result.returncode == 0, result.stderr[-2000:]
    names = [
        {p["name"] for p in json.loads((tmp_path / d / "report.json").read_text())["participants"]}
        for d in ("0-2", "1-2")
    ]
    assert names[0].isdisjoint(names[1])
    merged = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "report",
            "merge",
            str(tmp_path / "0-2"),
            str(tmp_path / "1-2"),
            "--out",
            str(tmp_path / "merged"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert merged.returncode == 0, merged.stderr
    s = summary(tmp_path / "merged")
    assert s["participants"] == 4 and s["sessions_expected"] == s["sessions_connected"] == 4

    def probes(report: str) -> int:
        timeline = json.loads((tmp_path / report / "report.json").read_text())["timeline"]
        return sum(row["loop_lag_probes"] for row in timeline)

    assert probes("merged") == probes("0-2") + probes("1-2") > 0
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "report",
            "merge",
            str(tmp_path / "0-2"),
            str(tmp_path / "0-2"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode != 0 and "the same shard appears twice" in again.stderr


def test_tokens_file(devserver, tmp_path: Path) -> None:
    issued = devserver.tokens(["t-a", "t-b"])
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("".join(f"{n}\t{e['token']}\n" for n, e in issued.items()))
    result = load(
        devserver,
        tmp_path / "r",
        *SMALL_RUN,
        "--tokens",
        str(tokens),
        key=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert {p["name"] for p in report["participants"]} == {"t-a", "t-b"}
    assert report["summary"]["sessions_connected"] == 2
    assert all(
        e["token"] not in (tmp_path / "r" / "report.json").read_text() for e in issued.values()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--shard", "2/2"], "--shard: need 0 <= I < N"),
        (["--peers-per-meeting", "1"], "--peers-per-meeting >= 2"),
    ],
)
def test_bad_plans_exit_with_one_line(devserver, tmp_path: Path, args, message) -> None:
    result = load(devserver, tmp_path / "r", *SMALL_RUN, *args)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode != 0 and len(lines) == 1 and message in lines[0], lines


def test_identities_are_required(devserver, tmp_path: Path) -> None:
    result = load(
        devserver,
        tmp_path / "r",
        *SMALL_RUN,
        key=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith("connvo-agent: error: identities:")
