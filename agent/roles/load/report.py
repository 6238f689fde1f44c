"""Load reports: `report.json` (raw samples, so shards merge exactly) and a self-contained
`report.html` whose plots are inline SVG drawn with matplotlib.

Quality (docs/quality.md, docs/roles/load.md): each connection end's whole-call figures per
direction are raw values in `participants[].sessions[].quality`; per participant, the summary and
the HTML are computed from them, and the timeline's quality columns are sums and counts, so a
merged report computes the same figures as one run would.
"""

from __future__ import annotations

import html
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from agent.extras import require
from agent.roles.load.worker import percentile

REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
GOOD_MOS = 4.0  # agent.peer.session_quality.GOOD_MOS: "MOS >= 4.0" in the headline
FREEZE_WINDOW_S = 10  # the timeline's freeze rate is over windows of this many seconds


class ReportError(ValueError):
    """A report that cannot be read or merged; str() is one line."""


def _pcts(values: list[float], scale: float = 1.0) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None}
    return {
        "p50": round(scale * percentile(values, 0.50), 2),
        "p95": round(scale * percentile(values, 0.95), 2),
        "p99": round(scale * percentile(values, 0.99), 2),
        "max": round(scale * max(values), 2),
    }


def expected_sessions(report: dict[str, Any]) -> int:
    """Connections the topology asks for, counted at both ends."""
    plan = report["plan"]
    n, meetings = plan["peers_per_meeting"], plan["meetings"] * len(report["shards"])
    per_meeting = n * (n - 1) if plan["topology"] == "mesh" else 2 * (n - 1)
    return int(meetings * per_meeting)


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    participants = report["participants"]
    sessions = [s for p in participants for s in p["sessions"]]
    ttc = [s["time_to_connected_s"] for s in sessions if s["time_to_connected_s"] is not None]
    received = sum(s["packets_received"] for s in sessions)
    lost = sum(s["packets_lost"] for s in sessions)
    timeline = report["timeline"]
    return {
        "participants": len(participants),
        "joined": sum(1 for p in participants if p["join_s"] is not None),
        "join_errors": sum(1 for p in participants if p["error"]),
        "sessions_expected": expected_sessions(report),
        "sessions_connected": sum(1 for s in sessions if s["state"] == "connected"),
        "join_s": _pcts([p["join_s"] for p in participants if p["join_s"] is not None]),
        "time_to_connected_s": _pcts(ttc),
        "signal_latency_ms": _pcts([x for p in participants for x in p["signal_latency_ms"]]),
        "rtt_ms": _pcts([s["rtt_ms"] for s in sessions if s["rtt_ms"] is not None]),
        "jitter_ms": _pcts([s["jitter_ms"] for s in sessions if s["jitter_ms"] is not None]),
        "packet_loss_pct": round(100 * lost / (received + lost), 3) if received + lost else None,
        "peak_packets_per_s": max((row["packets_per_s"] for row in timeline), default=0),
        "loop_lag_p99_ms_max": max((row["loop_lag_p99_ms"] for row in timeline), default=0),
        "loop_lag_slow_pct": slow_lag_pct(timeline),
        "quality": quality_summary(sessions),
    }


# --- quality -------------------------------------------------------------------------------


def _totals(session: dict[str, Any], direction: str) -> dict[str, Any]:
    """A connection end's whole-call figures for one direction ({} in reports without them)."""
    quality: dict[str, dict[str, Any]] = session.get("quality") or {}
    return quality.get(direction) or {}


def _low_pcts(values: list[float]) -> dict[str, float | None]:
    """For figures whose low end matters (MOS): the minimum, p5, p50 and mean."""
    if not values:
        return {"min": None, "p5": None, "p50": None, "mean": None}
    return {
        "min": round(min(values), 2),
        "p5": round(percentile(values, 0.05), 2),
        "p50": round(percentile(values, 0.50), 2),
        "mean": round(sum(values) / len(values), 2),
    }


def quality_summary(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """Quality over every connection end: each connection counts at both its ends, each end for
    what it received (inbound) and what the far end reported of what it sent (outbound)."""
    mos = {
        d: [t["audio_mos_mean"] for s in sessions if (t := _totals(s, d)).get("audio_mos_mean")]
        for d in ("inbound", "outbound")
    }
    freeze_rates = [
        t["freezes_per_min"]
        for s in sessions
        if (t := _totals(s, "inbound")).get("freezes_per_min") is not None
    ]
    mouth_to_ear = [s["mouth_to_ear_ms"] for s in sessions if s.get("mouth_to_ear_ms") is not None]
    measured = [s for s in sessions if s.get("mouth_to_ear_marks") is not None]
    good = {d: _share(sum(1 for m in mos[d] if m >= GOOD_MOS), len(mos[d])) for d in mos}
    summary = {
        "connections_with_mos": len(mos["inbound"]),
        "audio_mos_in": _low_pcts(mos["inbound"]),
        "audio_mos_out": _low_pcts(mos["outbound"]),
        "mos_in_good_pct": good["inbound"],
        "mos_out_good_pct": good["outbound"],
        "video_connections": len(freeze_rates),
        "freeze_count": sum(_totals(s, "inbound").get("freeze_count") or 0 for s in sessions),
        "freezes_per_min": _pcts(freeze_rates),
        "mouth_to_ear_ms": _pcts(mouth_to_ear),
        # connection ends that ran a detector, and the marks they heard and missed
        "mouth_to_ear_connections": len(measured),
        "mouth_to_ear_marks": sum(s["mouth_to_ear_marks"] for s in measured),
        "mouth_to_ear_missed": sum(s.get("mouth_to_ear_missed") or 0 for s in measured),
    }
    summary["headline"] = headline(summary)
    return summary


def headline(q: dict[str, Any]) -> str:
    """The quality in one sentence: "98 % of connections MOS >= 4.0; 2.0 freezes/min p95"."""
    if q["connections_with_mos"]:
        audio = (
            f"{q['mos_in_good_pct']:g} % of connections MOS >= {GOOD_MOS:.1f} "
            f"(audio received, p5 {q['audio_mos_in']['p5']:.2f})"
        )
    else:
        audio = "no audio quality measured"
    if q["video_connections"]:
        video = f"{q['freezes_per_min']['p95']:.1f} freezes/min p95"
    else:
        video = "no video received"
    parts = [audio, video]
    if q["mouth_to_ear_ms"]["p50"] is not None:
        parts.append(f"mouth to ear p50 {q['mouth_to_ear_ms']['p50']:.0f} ms")
    return "; ".join(parts)


def _share(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def participant_quality(sessions: list[dict[str, Any]]) -> dict[str, Any]:
    """One participant's quality over its connections, per direction."""
    quality: dict[str, Any] = {}
    for direction in ("inbound", "outbound"):
        totals = [t for s in sessions if (t := _totals(s, direction)).get("intervals")]
        mos = [(t["audio_mos_mean"], t["duration_s"]) for t in totals if t.get("audio_mos_mean")]
        weight = sum(seconds for _, seconds in mos)
        video_s = sum(t.get("video_duration_s") or 0.0 for t in totals)
        freezes = sum(t.get("freeze_count") or 0 for t in totals)
        mins = [t["audio_mos_min"] for t in totals if t.get("audio_mos_min") is not None]
        packets = sum(t["packets"] for t in totals)
        lost = sum(t["packets_lost"] for t in totals)
        expected = packets + lost if direction == "inbound" else packets
        quality[direction] = {
            "connections": len(totals),
            "audio_mos_mean": round(sum(m * s for m, s in mos) / weight, 3) if weight else None,
            "audio_mos_min": min(mins) if mins else None,
            "loss_pct": round(100 * lost / expected, 3) if expected else None,
            "freeze_count": freezes if video_s else None,
            "freezes_per_min": round(60 * freezes / video_s, 3) if video_s else None,
        }
    return quality


def slow_lag_pct(rows: list[dict[str, Any]]) -> float | None:
    """Percentage of event-loop lag probes that were slow (>= 50 ms) over these rows."""
    probes = sum(row.get("loop_lag_probes", 0) for row in rows)
    slow = sum(row.get("loop_lag_slow", 0) for row in rows)
    return round(100 * slow / probes, 3) if probes else None


# The timeline's quality columns (agent.roles.load.worker.Sample): sums and counts, summed.
_QUALITY_SUMMED = (
    "rtp_lost_per_s",
    "mos_in_sum",
    "mos_in_n",
    "mos_in_under_4",
    "mos_out_sum",
    "mos_out_n",
    "mos_out_under_4",
    "video_in_n",
    "video_frames",
    "freeze_count",
    "freeze_duration_s",
    "mouth_to_ear_n",
    "mouth_to_ear_sum_ms",
)


def merge_timelines(timelines: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sum per-second counts of workers or shards (lag: the worst)."""
    buckets: dict[int, dict[str, Any]] = defaultdict(
        lambda: {
            "started": 0,
            "joined": 0,
            "connected": 0,
            "negotiating": 0,
            "failed": 0,
            "packets_per_s": 0.0,
            "rtp_per_s": 0.0,
            "rss_mb": 0.0,
            "loop_lag_p99_ms": 0.0,
            "loop_lag_probes": 0,
            "loop_lag_slow": 0,
            "cpu_pct": 0.0,
            **dict.fromkeys(_QUALITY_SUMMED, 0),
        }
    )
    for timeline in timelines:
        # one row per second and timeline (the last), then summed across workers or shards
        per_second = {round(row["t"]): row for row in timeline}
        for second, row in per_second.items():
            b = buckets[second]
            summed = (
                "started",
                "joined",
                "connected",
                "negotiating",
                "failed",
                "packets_per_s",
                "rtp_per_s",
                "rss_mb",
                "loop_lag_probes",
                "loop_lag_slow",
                "cpu_pct",
                *_QUALITY_SUMMED,
            )
            for key in summed:
                b[key] += row.get(key, 0)
            b["loop_lag_p99_ms"] = max(b["loop_lag_p99_ms"], row["loop_lag_p99_ms"])
    return [{"t": t, **buckets[t]} for t in sorted(buckets)]


def build_report(
    plan: dict[str, Any],
    shards: list[str],
    started_at: float,
    participants: list[dict[str, Any]],
    timelines: list[list[dict[str, Any]]],
) -> dict[str, Any]:
    for p in participants:
        p["quality"] = participant_quality(p["sessions"])
    report: dict[str, Any] = {
        "version": 1,
        "plan": plan,
        "shards": shards,
        "started_at": started_at,
        "participants": participants,
        "timeline": merge_timelines(timelines),
    }
    report["summary"] = summarize(report)
    return report


def write_report(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    json_path, html_path = directory / REPORT_JSON, directory / REPORT_HTML
    json_path.write_text(json.dumps(report, indent=1))
    html_path.write_text(render_html(report))
    return json_path, html_path


def read_report(directory: Path) -> dict[str, Any]:
    path = directory / REPORT_JSON if directory.is_dir() else directory
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None
    if not isinstance(report, dict) or report.get("version") != 1:
        raise ReportError(f"{path} is not a connvo-agent load report")
    return report


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One report from shard reports of the same plan (identities and meetings are distinct)."""
    if not reports:
        raise ReportError("no reports to merge")
    first = reports[0]["plan"]
    keys = ("meetings", "peers_per_meeting", "topology", "media")
    for r in reports[1:]:
        if any(r["plan"][k] != first[k] for k in keys):
            raise ReportError("reports come from different plans; merge shards of one run")
    shards = [s for r in reports for s in r["shards"]]
    if len(set(shards)) != len(shards):
        raise ReportError(f"the same shard appears twice: {sorted(shards)}")
    # shard clocks start a little apart; timelines are aligned on each shard's own start
    return build_report(
        first,
        shards,
        min(r["started_at"] for r in reports),
        [p for r in reports for p in r["participants"]],
        [r["timeline"] for r in reports],
    )


# --- HTML ------------------------------------------------------------------------------------


def _svg(draw: Any) -> str:
    require("load", "the load report's plots")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
    finally:
        plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _hist(values: list[float], xlabel: str) -> Any:
    def draw(ax: Any) -> None:
        if values:
            ax.hist(values, bins=min(40, max(5, len(values) // 3)), color="#3b7dd8")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("count")

    return draw


def _over_time(timeline: list[dict[str, Any]]) -> Any:
    def draw(ax: Any) -> None:
        t = [row["t"] for row in timeline]
        for key, colour in (
            ("started", "#999999"),
            ("connected", "#2a9d3a"),
            ("negotiating", "#e0a020"),
            ("failed", "#d03030"),
        ):
            ax.plot(t, [row[key] for row in timeline], label=key, color=colour)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("participants / connections")
        ax.legend(loc="upper left", fontsize="small")

    return draw


def _mos_hist(sessions: list[dict[str, Any]]) -> Any:
    def draw(ax: Any) -> None:
        drawn = False
        for direction, colour in (("inbound", "#3b7dd8"), ("outbound", "#e0a020")):
            values = [
                t["audio_mos_mean"]
                for s in sessions
                if (t := _totals(s, direction)).get("audio_mos_mean")
            ]
            if values:
                drawn = True
                label = "received" if direction == "inbound" else "sent (far end's reports)"
                ax.hist(values, bins=[1 + i * 0.1 for i in range(36)], color=colour, alpha=0.6,
                        label=label)  # fmt: skip
        if drawn:
            ax.axvline(GOOD_MOS, color="#999999", linestyle="--", linewidth=1)
            ax.legend(loc="upper left", fontsize="small")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("audio MOS per connection (mean over the call)")
        ax.set_ylabel("connections")

    return draw


def _quality_over_time(timeline: list[dict[str, Any]]) -> Any:
    def draw(ax: Any) -> None:
        t = [row["t"] for row in timeline]
        for key, label, colour in (
            ("in", "MOS received", "#3b7dd8"),
            ("out", "MOS sent", "#e0a020"),
        ):
            mean = [
                row[f"mos_{key}_sum"] / row[f"mos_{key}_n"] if row.get(f"mos_{key}_n") else None
                for row in timeline
            ]
            ax.plot(t, [float("nan") if m is None else m for m in mean], label=label, color=colour)
        ax.set_ylim(1.0, 4.6)
        ax.set_xlabel("seconds since start")
        ax.set_ylabel("mean audio MOS of connections")
        ax.legend(loc="lower left", fontsize="small")
        windows = _freeze_windows(timeline)
        if windows:
            right = ax.twinx()
            right.step(
                [w for w, _ in windows],
                [rate for _, rate in windows],
                where="post",
                color="#d03030",
                label="freezes/min per video connection",
            )
            right.set_ylabel("freezes per minute")
            right.set_ylim(bottom=0)
            right.legend(loc="lower right", fontsize="small")

    return draw


def _freeze_windows(timeline: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """Freezes per minute per receiving connection, over windows of FREEZE_WINDOW_S seconds."""
    windows: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in timeline:
        w = windows[int(row["t"] // FREEZE_WINDOW_S)]
        w[0] += row.get("freeze_count", 0)
        w[1] += row.get("video_in_n", 0)  # connection-seconds of video
    return [
        (k * FREEZE_WINDOW_S, 60 * freezes / seconds)
        for k, (freezes, seconds) in sorted(windows.items())
        if seconds
    ]


def render_html(report: dict[str, Any]) -> str:
    s = report["summary"]
    sessions = [x for p in report["participants"] for x in p["sessions"]]
    plots = [
        (
            "Time to connected",
            _hist(
                [
                    x["time_to_connected_s"]
                    for x in sessions
                    if x["time_to_connected_s"] is not None
                ],
                "seconds",
            ),
        ),
        ("Participants and connections over time", _over_time(report["timeline"])),
        (
            "Signal latency (server insert to applied)",
            _hist([v for p in report["participants"] for v in p["signal_latency_ms"]], "ms"),
        ),
        (
            "Round-trip time (getStats)",
            _hist([x["rtt_ms"] for x in sessions if x["rtt_ms"] is not None], "ms"),
        ),
        (
            "Jitter (getStats)",
            _hist([x["jitter_ms"] for x in sessions if x["jitter_ms"] is not None], "ms"),
        ),
        (
            "Packet loss per connection",
            _hist(
                [
                    100 * x["packets_lost"] / (x["packets_received"] + x["packets_lost"])
                    for x in sessions
                    if x["packets_received"] + x["packets_lost"]
                ],
                "%",
            ),
        ),
        ("Audio MOS per connection", _mos_hist(sessions)),
        (
            "Video freezes per connection",
            _hist(
                [
                    t["freezes_per_min"]
                    for x in sessions
                    if (t := _totals(x, "inbound")).get("freezes_per_min") is not None
                ],
                "freezes per minute",
            ),
        ),
        ("Quality over the run", _quality_over_time(report["timeline"])),
    ]
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in s.items()
        if k != "quality"
    )
    quality = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(json.dumps(v))}</td></tr>"
        for k, v in s["quality"].items()
        if k != "headline"
    )
    plan = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in report["plan"].items()
    )
    figures = "".join(f"<h2>{html.escape(title)}</h2>{_svg(draw)}" for title, draw in plots)
    network = _network_html(report.get("network"))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>connvo-agent load report</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
table{{border-collapse:collapse}}
th,td{{text-align:left;padding:.2em .8em;border-bottom:1px solid #ddd}}
.headline{{font-size:1.25em}}
</style></head><body>
<h1>connvo-agent load report</h1>
<p class="headline"><strong>{html.escape(s["quality"]["headline"])}</strong>; connections
{s["sessions_connected"]}/{s["sessions_expected"]}, participants {s["joined"]}/{s["participants"]}
joined</p>
{_mouth_to_ear_html(s["quality"])}
<p>Shards: {html.escape(", ".join(report["shards"]))}</p>
<h2>Summary</h2><table>{rows}</table>
<h2>Quality</h2><table>{quality}</table>
<h2>Plan</h2><table>{plan}</table>
{network}
{figures}
</body></html>
"""


def _mouth_to_ear_html(q: dict[str, Any]) -> str:
    """The mouth-to-ear figures, under the headline (nothing when the run did not measure)."""
    measured = q.get("mouth_to_ear_connections") or 0
    if not measured:
        return ""
    m = q["mouth_to_ear_ms"]
    if m["p50"] is None:
        figures = "no mark heard"
    else:
        figures = ", ".join(f"{k} {m[k]:g} ms" for k in ("p50", "p95", "p99", "max"))
    return (
        f'<p class="mouth-to-ear">Mouth to ear (audio; each connection end\'s median): {figures}; '
        f"{measured} connection ends measured, {q['mouth_to_ear_marks']} marks heard, "
        f"{q['mouth_to_ear_missed']} missed</p>"
    )


def _network_html(network: dict[str, Any] | None) -> str:
    """The impaired link of a `--network` run: profile, who was on which side, what crossed the
    link and what the link did (nothing for runs without one)."""
    if not network:
        return ""
    crossing = network.get("connections_crossing") or {}
    sides: dict[str, int] = defaultdict(int)
    for side in (network.get("participants") or {}).values():
        sides[str(side)] += 1
    rows = [
        ("profile", network.get("profile")),
        ("impairment", network.get("impairment")),
        ("addresses", network.get("addresses")),
        ("worker processes per side", network.get("workers")),
        ("participants per side", dict(sorted(sides.items()))),
        (
            "connections across the link",
            f"{crossing.get('crossing')} of {crossing.get('total')}" if crossing else None,
        ),
        ("backend connections (forwarded)", network.get("backend_connections")),
    ]
    link = network.get("link") or {}
    rows += [(f"link {lane}", figures) for lane, figures in link.items()]
    table = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_text(v))}</td></tr>" for k, v in rows
    )
    names = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(side))}</td></tr>"
        for name, side in sorted((network.get("participants") or {}).items())
    )
    return (
        f"<h2>Network</h2><table>{table}</table>"
        f"<details><summary>Each participant's side</summary><table>{names}</table></details>"
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
