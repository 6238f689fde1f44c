"""The load report's quality figures: per connection (both directions), per participant, over
time and in a one-line summary, from a real `connvo-agent load` run; and merged exactly."""

from __future__ import annotations

import copy
import html
import json
from pathlib import Path
from typing import Any

from agent.roles.load.report import merge_reports, participant_quality, quality_summary
from tests.load.test_load import load


def test_a_load_report_has_quality_figures_and_merges_them(devserver: Any, tmp_path: Path) -> None:
    result = load(
        devserver,
        tmp_path / "r",
        *("--meetings", "1", "--peers-per-meeting", "2", "--duration", "3", "--media", "full"),
        *("--mouth-to-ear", "0"),  # measured in test_load_mouth_to_ear.py
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "r" / "report.json").read_text())

    sessions = [s for p in report["participants"] for s in p["sessions"]]
    assert len(sessions) == 2
    for s in sessions:
        inbound, outbound = s["quality"]["inbound"], s["quality"]["outbound"]
        # the end of the hold measured every connection, however short its life
        assert inbound["intervals"] >= 1 and inbound["duration_s"] > 0.5
        # each end sends a tone (its own encoder) over loopback: nothing lost, and a MOS users
        # are satisfied with
        assert inbound["packets"] > 50 and inbound["loss_pct"] == 0
        assert inbound["audio_mos_mean"] > 4.0 and inbound["audio_mos_min"] > 4.0
        assert outbound["packets"] > 50
        # --media full sends no video: the freeze fields are there, and empty
        assert inbound["freeze_count"] is None and inbound["freezes_per_min"] is None
        assert s["mouth_to_ear_ms"] is None and s["mouth_to_ear_marks"] is None  # not measured
    for p in report["participants"]:
        assert p["quality"]["inbound"]["connections"] == 1
        assert p["quality"]["inbound"]["audio_mos_mean"] > 4.0

    q = report["summary"]["quality"]
    assert q["connections_with_mos"] == 2 and q["mos_in_good_pct"] == 100
    assert q["audio_mos_in"]["min"] > 4.0 and q["video_connections"] == 0
    assert q["headline"].startswith("100 % of connections MOS >= 4.0 (audio received, p5 4.")
    assert q["headline"].endswith("; no video received")

    # the timeline: each second, the connected sessions' latest MOS, summed
    rows = [row for row in report["timeline"] if row["mos_in_n"]]
    assert rows and all(row["mos_in_n"] <= 2 for row in rows)
    assert all(4.0 < row["mos_in_sum"] / row["mos_in_n"] <= 4.5 for row in rows)

    page = (tmp_path / "r" / "report.html").read_text()
    assert page.count("<svg") == 9
    headline = html.escape(q["headline"])
    assert headline in page and page.index(headline) < page.index("<svg")
    for title in ("Audio MOS per connection", "Video freezes per connection", "Quality over"):
        assert title in page

    check_merge(report)


def check_merge(one: dict[str, Any]) -> None:
    """Shards' quality: the merged figures are those of all their connections, as one run's."""
    # a second shard whose connections got other figures: one end a bad MOS, video freezes
    other = copy.deepcopy(one)
    other["shards"] = ["1/2"]
    worse = other["participants"][0]["sessions"][0]["quality"]["inbound"]
    worse.update(audio_mos_mean=2.0, freeze_count=3, freezes_per_min=6.0, video_duration_s=30.0)
    merged = merge_reports([one, other])

    sessions = [s for r in (one, other) for p in r["participants"] for s in p["sessions"]]
    q = merged["summary"]["quality"]
    assert q == quality_summary(sessions)
    assert q["connections_with_mos"] == 4 and q["mos_in_good_pct"] == 75
    assert q["video_connections"] == 1 and q["freeze_count"] == 3
    assert q["headline"].startswith("75 % of connections MOS >= 4.0 (audio received, p5 2.00)")
    assert q["headline"].endswith("; 6.0 freezes/min p95")
    changed = merged["participants"][len(one["participants"])]
    assert changed["quality"] == participant_quality(changed["sessions"])
    assert changed["quality"]["inbound"]["freezes_per_min"] == 6.0
    # the timeline's quality columns are sums: twice one shard's
    for key in ("mos_in_n", "mos_in_sum", "mos_out_n", "rtp_lost_per_s"):
        assert sum(row[key] for row in merged["timeline"]) == 2 * sum(
            row[key] for row in one["timeline"]
        )
