"""`connvo-agent load` and `connvo-agent report merge`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from agent.cli.loop import run_async


@click.command("load")
@click.option("--url", required=True, help="Convex deployment (or dev backend) URL.")
@click.option("--meetings", type=int, required=True, help="Meetings in this shard.")
@click.option("--peers-per-meeting", type=int, required=True)
@click.option(
    "--duration",
    type=float,
    required=True,
    help="Seconds the population is held once everyone has connected (or --connect-timeout "
    "after the ramp).",
)
@click.option(
    "--ramp", type=float, default=10.0, show_default=True, help="Participants started per second."
)
@click.option("--topology", type=click.Choice(["mesh", "star"]), default="mesh", show_default=True)
@click.option(
    "--media",
    type=click.Choice(["full", "preencoded", "none"]),
    default="preencoded",
    show_default=True,
)
@click.option(
    "--tokens",
    "tokens_file",
    type=click.Path(path_type=Path),
    default=None,
    help="One token per line (name<TAB>token allowed); shards take disjoint slices.",
)
@click.option(
    "--admin-key",
    envvar="CONNVO_DEVSERVER_ADMIN_KEY",
    default=None,
    help="Dev backend only: create identities with its admin key.",
)
@click.option(
    "--procs",
    type=int,
    default=1,
    show_default=True,
    help="Worker processes, each with its own uvloop event loop.",
)
@click.option(
    "--shard",
    default="0/1",
    show_default=True,
    help="I/N: this run is shard I of N (distinct identities and meetings).",
)
@click.option(
    "--report",
    "report_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory for report.json and report.html.",
)
@click.option(
    "--ice-host",
    "ice_host_addresses",
    multiple=True,
    help="Gather host candidates only on this local address (repeatable).",
)
@click.option(
    "--connect-timeout",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds a connection may take; the hold starts at the latest this long after the ramp.",
)
@click.option(
    "--network",
    metavar="PROFILE",
    default=None,
    help="Put the participants on the two sides of an impaired link with this profile (good, "
    "wifi, mobile, bad; docs/network.md). Needs root over a user namespace; the URL must name "
    "an IPv4 address or localhost.",
)
@click.option(
    "--mouth-to-ear",
    "mouth_to_ear",
    type=int,
    default=1,
    show_default=True,
    metavar="N",
    help="Senders mark their audio and each participant measures the mouth-to-ear latency of up "
    "to N of the audio streams it receives (decoding them); 0: no marks, nothing decoded for them.",
)
def load_command(
    url: str,
    meetings: int,
    peers_per_meeting: int,
    duration: float,
    ramp: float,
    topology: str,
    media: str,
    tokens_file: Path | None,
    admin_key: str | None,
    procs: int,
    shard: str,
    report_dir: Path,
    ice_host_addresses: tuple[str, ...],
    connect_timeout: float,
    network: str | None,
    mouth_to_ear: int,
) -> int:
    """Simulate participants: real identities, signalling, ICE, DTLS and SRTP."""
    from agent.extras import require

    require("load", "the load runner")
    from agent.logsetup import register_secret, setup_logging
    from agent.roles.load.plan import LoadPlan, PlanError, Shard
    from agent.roles.load.runner import run_and_write

    setup_logging("warning")
    register_secret(admin_key)
    try:
        plan = LoadPlan(
            url=url.rstrip("/"),
            meetings=meetings,
            peers_per_meeting=peers_per_meeting,
            duration=duration,
            report_dir=report_dir,
            ramp=ramp,
            topology=topology,  # type: ignore[arg-type]  # click.Choice checked it
            media=media,  # type: ignore[arg-type]
            tokens_file=tokens_file,
            admin_key=admin_key,
            procs=procs,
            shard=Shard.parse(shard),
            ice_host_addresses=ice_host_addresses,
            connect_timeout=connect_timeout,
            network=network,
            mouth_to_ear=mouth_to_ear,
        )
    except PlanError as exc:
        raise click.ClickException(str(exc)) from None

    async def main() -> int:
        report, paths = await run_and_write(plan)
        s = report["summary"]
        click.echo(
            f"participants {s['joined']}/{s['participants']} joined, connections "
            f"{s['sessions_connected']}/{s['sessions_expected']}, time to connected "
            f"p50 {s['time_to_connected_s']['p50']} s p95 {s['time_to_connected_s']['p95']} s, "
            f"loss {s['packet_loss_pct']} %, loop lag p99 {s['loop_lag_p99_ms_max']:.0f} ms; "
            f"{s['quality']['headline']}"
        )
        if "network" in report:
            n = report["network"]
            lanes = ", ".join(
                f"{lane} {n['link'][lane]['sent']} sent {n['link'][lane]['lost']} lost "
                f"{n['link'][lane]['capped']} capped"
                for lane in ("a_to_b", "b_to_a")
            )
            crossing = n["connections_crossing"]
            click.echo(
                f"network {n['profile']}: {crossing['crossing']}/{crossing['total']} connections "
                f"across the link; {lanes}"
            )
        for path in paths:
            click.echo(f"wrote {path}")
        return 0

    try:
        return run_async(main())
    except PlanError as exc:
        raise click.ClickException(str(exc)) from None


@click.group("report")
def report_group() -> None:
    """Load reports."""


@report_group.command("merge")
@click.argument("dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("merged-report"),
    show_default=True,
    help="Directory for the merged report.json and report.html.",
)
def merge_command(dirs: tuple[Path, ...], out: Path) -> int:
    """Combine shard reports (DIR... holding report.json) into one."""
    from agent.extras import require

    require("load", "the load report")
    from agent.roles.load.report import ReportError, merge_reports, read_report, write_report

    try:
        merged = merge_reports([read_report(d) for d in dirs])
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    for path in write_report(merged, out):
        click.echo(f"wrote {path}")
    click.echo(json.dumps(merged["summary"]["time_to_connected_s"]))
    return 0
