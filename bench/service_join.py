"""Time from `POST /v1/bots` to `in_meeting` and to the bot's first media connection, with a warm
pool, for `connvo-agent serve` (local worker pool) and `connvo-agent serve --redis` (one
`connvo-agent worker`).

Everything real, on loopback: the dev backend, the service and its workers as processes, a real
webhook receiver (in this process) and, in each meeting, a remote aiortc participant
(tests/support/peers.py, audio only) that is already in the meeting when the bot is asked for.
The service and its workers gather ICE candidates on 127.0.0.1 only (CONNVO_ICE_HOST_ADDRESSES,
set by tests/support's ServiceProcess and WorkerProcess); run it in `scripts/isolated` anyway.
The bot (`role: bot`, pre-encoded tone, no video, `call_everyone`) calls that participant as it
joins; the participant answers.

Warm pool: the service is started and its workers have said hello (they are listed in /metrics);
then warm-up bots, as many at once as there are workers so that every worker has run one, join,
connect and leave. Then N bots, one after another, each into a fresh meeting: POST, wait until
in_meeting and media_connected, DELETE, wait until ended, next.

Per bot, on the service's clock (same machine as this script, so one clock):
- in_meeting = history[in_meeting].at - created_at (the service's own record of the request and of
  the worker's report), split into queued -> joining (handing the bot to a worker) and joining ->
  in_meeting (the bot's join: backend calls, its own WebRTC session);
- client = from sending the POST to a GET answering in_meeting (polled every 20 ms), for
  reference: what a caller polling the API sees;
- media = the `bot.media_connected` webhook's `timestamp` (when the service took the worker's
  report) - created_at.
Target: p50 of in_meeting <= 300 ms on loopback (PASS/FAIL printed).

    scripts/isolated .venv/bin/python bench/service_join.py [--bots 30] [--mode local|redis|both]
                                                            [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent.devserver.process import DevServerProcess  # noqa: E402
from agent.patches import install as install_patches  # noqa: E402
from agent.peer.ice import restrict_host_addresses  # noqa: E402
from tests.support.peers import RemotePeer  # noqa: E402
from tests.support.redis_server import RedisServer, WorkerProcess  # noqa: E402
from tests.support.service import SECRET, Client, ServiceProcess, WebhookReceiver  # noqa: E402

TARGET_P50_S = 0.300
CLIENT_POLL_S = 0.02
JOIN_TIMEOUT_S = 30.0
MEDIA_TIMEOUT_S = 30.0
END_TIMEOUT_S = 40.0
READY_TIMEOUT_S = 60.0
SERVICE_STOP_S = 45.0  # the service's own stop timeout (35 s) and a little more
BOT_SETTINGS = {"call_everyone": True}
BOT_MEDIA = {"audio": "tone", "video": "none"}  # tone: encoded once, replayed (pre-encoded)


# --- shared with bench/service_fleet.py --------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def iso_epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def at(bot: dict[str, Any], state: str, nth: int = 1) -> float | None:
    """When the bot entered `state` for the `nth` time (its history, Unix seconds)."""
    seen = 0
    for entry in bot["history"]:
        if entry["state"] == state:
            seen += 1
            if seen == nth:
                return float(entry["at"])
    return None


def bot_body(
    url: str,
    meeting_id: str,
    token: str,
    receiver: WebhookReceiver | None,
    *,
    role: str = "bot",
    media: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "meeting_id": meeting_id,
        "url": url,
        "token": token,
        "role": role,
        "settings": settings or {},
    }
    if media:
        body["media"] = media
    if receiver is not None:
        body["webhook"] = {"url": receiver.url, "secret": SECRET}
    return body


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def stop_service(service: ServiceProcess) -> None:
    """SIGTERM (its bots leave, its workers exit), SIGKILL if it takes too long; then kill any
    local worker it left behind."""
    process = service.process
    if process is None:
        return
    children = child_pids(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(SERVICE_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_worker(worker: WorkerProcess, grace: float = 20.0) -> None:
    """SIGTERM (a drain: its bots are handed back), SIGKILL if it takes too long."""
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)
        try:
            worker.process.wait(grace)
        except subprocess.TimeoutExpired:
            worker.close()


async def wait_workers(
    client: Client, count: int, names: set[str] | None = None, within: float = READY_TIMEOUT_S
) -> list[str]:
    """Until /metrics lists `count` live workers (and every one of `names`); their ids."""
    async with asyncio.timeout(within):
        while True:
            text = (await client.http.get("/metrics")).text
            workers = [
                line.split('worker="', 1)[1].split('"', 1)[0]
                for line in text.splitlines()
                if line.startswith("connvo_service_worker_capacity{")
            ]
            if len(workers) >= count and (names or set()) <= set(workers):
                return workers
            await asyncio.sleep(0.1)


# --- one bot, timed ------------------------------------------------------------------------------


class JoinBench:
    def __init__(self, server: DevServerProcess, client: Client, receiver: WebhookReceiver) -> None:
        self.server = server
        self.client = client
        self.receiver = receiver
        self.bot_token = server.token("bot")
        self.peer_token = server.token("alice")
        self.peer_user = server.user_id("alice")

    def media_at(self, bot_id: str) -> float | None:
        for event in self.receiver.events("bot.media_connected"):
            if event["data"]["bot_id"] == bot_id:
                return iso_epoch(event["timestamp"])
        return None

    async def one(self) -> dict[str, Any]:
        """A bot into a fresh meeting with a participant already there; its figures."""
        meeting = self.server.meeting("alice", ["bot"], title="service join")
        peer = RemotePeer(self.server.url, self.peer_token, meeting, self.peer_user, video=False)
        row: dict[str, Any] = {"meeting": meeting}
        async with peer:
            body = bot_body(
                self.server.url, meeting, self.bot_token, self.receiver,
                media=BOT_MEDIA, settings=BOT_SETTINGS,
            )  # fmt: skip
            sent = time.time()
            response = await self.client.create(body)
            if response.status_code != 201:
                raise RuntimeError(f"POST /v1/bots: {response.status_code} {response.text}")
            bot_id = response.json()["id"]
            row["id"] = bot_id
            try:
                async with asyncio.timeout(JOIN_TIMEOUT_S):
                    while True:
                        bot = await self.client.bot(bot_id)
                        if bot["state"] == "in_meeting":
                            row["client_s"] = time.time() - sent
                            break
                        if bot["state"] in ("ended", "failed"):
                            raise RuntimeError(f"bot {bot['state']}: {bot['reason']}")
                        await asyncio.sleep(CLIENT_POLL_S)
                await self.receiver.wait_for(
                    lambda: self.media_at(bot_id) is not None, within=MEDIA_TIMEOUT_S
                )
                async with asyncio.timeout(MEDIA_TIMEOUT_S):
                    await peer.connected.wait()
            finally:
                await self.client.http.delete(f"/v1/bots/{bot_id}")
            final = await self.client.wait_state(bot_id, "ended", "failed", within=END_TIMEOUT_S)
        created = float(final["created_at"])
        joining, in_meeting = at(final, "joining"), at(final, "in_meeting")
        media = self.media_at(bot_id)
        row.update(
            worker=final["worker"],
            end=f"{final['state']}/{final['reason']}",
            in_meeting_s=None if in_meeting is None else in_meeting - created,
            dispatch_s=None if joining is None else joining - created,
            join_s=None if joining is None or in_meeting is None else in_meeting - joining,
            media_s=None if media is None else media - created,
            post_rtt_s=created - sent,
        )
        return row


# --- a mode: a service, warmed, then N bots --------------------------------------------------


async def run_mode(
    mode: str, server: DevServerProcess, workdir: Path, bots: int, warmup: int | None
) -> dict[str, Any]:
    receiver = await WebhookReceiver().start()
    redis: RedisServer | None = None
    worker: WorkerProcess | None = None
    service: ServiceProcess | None = None
    client: Client | None = None
    try:
        if mode == "redis":
            redis = RedisServer(workdir / "redis").start()
            service = ServiceProcess(workdir / "service", "--redis", redis.url)
            service.start()
            worker = WorkerProcess(redis.url, "w1", workdir / "workers", max_bots=10)
            expected = 1
        else:
            service = ServiceProcess(workdir / "service")
            service.start()
            expected = min(4, os.cpu_count() or 1)  # serve's default pool
        client = Client(service.url)
        workers = await wait_workers(client, expected)
        bench = JoinBench(server, client, receiver)
        started = time.monotonic()
        warm = await asyncio.gather(*(bench.one() for _ in range(warmup or len(workers))))
        print(
            f"# {mode}: {len(workers)} worker(s) ready; warm-up bots joined in "
            + ", ".join(ms(r["in_meeting_s"]) for r in warm)
            + f" ({time.monotonic() - started:.1f} s)",
            file=sys.stderr,
        )
        rows = []
        for i in range(bots):
            row = await bench.one()
            rows.append(row)
            print(
                f"# {mode} {i + 1:>3}/{bots}: in_meeting {ms(row['in_meeting_s'])} "
                f"(dispatch {ms(row['dispatch_s'])}, join {ms(row['join_s'])}), client "
                f"{ms(row.get('client_s'))}, media {ms(row['media_s'])}, {row['end']}",
                file=sys.stderr,
                flush=True,
            )
        return summarise(mode, len(workers), rows, [r["in_meeting_s"] for r in warm])
    finally:
        if client is not None:
            await client.aclose()
        await receiver.close()
        if service is not None:
            await asyncio.to_thread(stop_service, service)
        if worker is not None:
            await asyncio.to_thread(stop_worker, worker)
        if redis is not None:
            redis.close()


def summarise(
    mode: str, workers: int, rows: list[dict[str, Any]], warm: list[float]
) -> dict[str, Any]:
    def stats(key: str) -> dict[str, float | None]:
        values = [r[key] for r in rows if r.get(key) is not None]
        return {
            "p50": percentile(values, 50),
            "p95": percentile(values, 95),
            "max": max(values) if values else None,
            "mean": statistics.fmean(values) if values else None,
        }

    summary = {
        "mode": mode,
        "workers": workers,
        "bots": len(rows),
        "warmup_in_meeting_s": warm,
        "in_meeting": stats("in_meeting_s"),
        "dispatch": stats("dispatch_s"),
        "join": stats("join_s"),
        "client": stats("client_s"),
        "media": stats("media_s"),
        "ended_requested": sum(r["end"] == "ended/requested" for r in rows),
        "rows": rows,
    }
    p50 = summary["in_meeting"]["p50"]
    summary["target_s"] = TARGET_P50_S
    summary["pass"] = p50 is not None and p50 <= TARGET_P50_S
    return summary


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'mode':<6} {'bots':>4}  {'POST->in_meeting p50/p95/max':>30}  "
        f"{'client p50/p95/max':>24}  {'POST->media p50/p95/max':>24}  "
        f"{'dispatch p50':>12} {'join p50':>9}  target"
    )
    print(header)

    def three(stats: dict[str, float | None]) -> str:
        return " / ".join(ms(stats[k]).replace(" ms", "") for k in ("p50", "p95", "max")) + " ms"

    for r in results:
        verdict = "PASS" if r["pass"] else "FAIL"
        print(
            f"{r['mode']:<6} {r['bots']:>4}  {three(r['in_meeting']):>30}  "
            f"{three(r['client']):>24}  {three(r['media']):>24}  "
            f"{ms(r['dispatch']['p50']):>12} {ms(r['join']['p50']):>9}  "
            f"{verdict} (p50 <= {TARGET_P50_S * 1000:.0f} ms)"
        )
        if r["ended_requested"] != r["bots"]:
            print(f"  {r['mode']}: only {r['ended_requested']}/{r['bots']} ended `requested`")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bots", type=int, default=30, help="bots measured, one after another")
    parser.add_argument("--mode", choices=["local", "redis", "both"], default="local")
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up bots at once (default: one per worker)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    args = parser.parse_args()
    install_patches()
    restrict_host_addresses(["127.0.0.1"])  # the remote peers' candidates: loopback only
    modes = ["local", "redis"] if args.mode == "both" else [args.mode]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-service-join-") as tmp:
        workdir = Path(tmp)
        with DevServerProcess(workdir / "devserver.sqlite") as server:
            for mode in modes:
                results.append(await run_mode(mode, server, workdir / mode, args.bots, args.warmup))
    print_table(results)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
