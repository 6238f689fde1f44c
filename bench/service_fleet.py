"""A fleet on this machine: `connvo-agent serve --redis` with two `connvo-agent worker` processes,
bots held in meetings with audio both ways, by role; then a worker killed with -9 and the time
until its bots are back in their meetings on the other one.

Everything real, on loopback: redis-server (on a Unix socket), the dev backend, the service, the
two workers, a webhook receiver in this process; ICE on 127.0.0.1 only (CONNVO_ICE_HOST_ADDRESSES,
set by tests/support's ServiceProcess and WorkerProcess). No harness peers: the meetings'
participants are the bots themselves. Each meeting holds a pair:
- `bot`: two `role: bot` bots (pre-encoded tone, no video), each sending audio to the other;
- `recorder`: a `role: recorder` with a `bot` (pre-encoded tone) whose audio it records;
- `transcriber`: a `role: transcriber` (pocketsphinx) with a `bot` (pre-encoded tone) whose audio
  it transcribes (a continuous tone: the voice detector hears speech all the time, the worst
  case for the recognizer).
In each pair the `bot` (the first bot in the `bot` rung) has `call_everyone` and calls its
partner, which only answers. The partners are requested first, then the callers, `--rate`
requests a second (0: one after another as fast as the API answers).

A rung is one role and one number of meetings, on two fresh workers (`--max-bots` each):
1. idle: each worker's RSS (/proc/PID/status VmRSS) and CPU (utime + stime of /proc/PID/stat)
   over `--idle` seconds, nothing running;
2. every bot requested; time from the first POST until all are in_meeting and all
   media_connected (the service's clock: history and webhook timestamps);
3. hold `--hold` seconds; each worker's RSS at the end of the hold and CPU over it; memory per bot
   = (RSS during - RSS idle) / bots on that worker;
4. every bot DELETEd; time from the first DELETE until all are final.
Watched throughout: each worker's heartbeat key in Redis (its lowest time to live, read every
100 ms: at 0 the service may count the worker lost) and how long the workers' reports waited
before reaching Redis (the events stream's own timestamps against the reports' `t`).
The rung is held when every bot was in_meeting and connected, still in_meeting at the end of the
hold, every bot that should receive media did (`connections[].packets_received` > 0 on each of
its connections: every bot of the `bot` rung, the recorders and transcribers of the others), no
bot was queued again for a lost worker, every bot ended `ended`/`requested`, no worker still ran
a bot afterwards, and no heartbeat key ran out.

Recovery (`--recovery-meetings` pairs of the `bot` rung, on `--recovery-workers` fresh workers
(two) of `--recovery-max-bots` each): once all are in_meeting and connected, SIGKILL the worker
running the most bots; time until every bot it ran is in_meeting again (on the others). Split per
bot, from the history: detection (kill -> `queued`, reason `worker_lost`: the worker's heartbeat key
expires after 5 s, the service looks every second), dispatch (`queued` -> `joining`), rejoin
(`joining` -> `in_meeting`). Target <= 15 s (PASS/FAIL). Then the time until every moved bot has
a connection up again.

    scripts/isolated .venv/bin/python bench/service_fleet.py [--rungs bot recorder transcriber]
        [--meetings 50] [--recorder-meetings 10 20 30 50] [--transcriber-meetings 2 4 6]
        [--rate 3] [--hold 20] [--max-bots 60] [--recovery-meetings 20]
        [--recovery-max-bots 60] [--recovery-workers 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import redis.asyncio as redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service_join import (  # noqa: E402  (bench/service_join.py)
    at,
    bot_body,
    iso_epoch,
    percentile,
    secs,
    stop_service,
    stop_worker,
    wait_workers,
)

from agent.devserver.process import DevServerProcess  # noqa: E402
from agent.service.redisq import ALIVE_TTL_S, EVENTS, alive_key  # noqa: E402
from tests.support.redis_server import RedisServer, WorkerProcess  # noqa: E402
from tests.support.service import Client, ServiceProcess, WebhookReceiver  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
RAMP_TIMEOUT_S = 90.0  # after the last POST
END_TIMEOUT_S = 90.0
RECOVERY_TARGET_S = 15.0
RECOVERY_TIMEOUT_S = 120.0
SETTLE_S = 3.0  # after the last bot is gone, before the next idle sample
IDLE_TIMEOUT_S = 60.0  # after all are final, until the workers run no bot
MEDIA_BACK_TIMEOUT_S = 60.0  # after the kill, for the moved bots' connections
FINAL = ("ended", "failed")
TONE = {"audio": "tone", "video": "none"}  # tone: encoded once, replayed (pre-encoded audio)
CALLER = {"call_everyone": True}


# --- /proc ------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


class Sample:
    """Each worker's RSS now and CPU seconds so far; the CPU between two samples. Also the whole
    machine's busy time and the part of it that is this benchmark's (every process it started
    and itself): what is left is other work on the machine, which disturbs the figures."""

    def __init__(self, workers: dict[str, WorkerProcess], ours: list[int]) -> None:
        self.t = time.monotonic()
        self.rss = {w: rss_mib(p.process.pid) for w, p in workers.items()}
        self.cpu = {w: cpu_seconds(p.process.pid) for w, p in workers.items()}
        self.ours = sum(cpu_seconds(pid) for pid in ours)
        self.machine = machine_ticks()

    def cpu_pct_since(self, earlier: Sample) -> dict[str, float]:
        span = self.t - earlier.t
        return {w: (self.cpu[w] - earlier.cpu[w]) / span * 100 for w in self.cpu}

    def machine_since(self, earlier: Sample) -> dict[str, float]:
        """CPU in % of ONE core over the interval: the machine's, ours, and the others'."""
        busy = self.machine[0] - earlier.machine[0]
        total = self.machine[1] - earlier.machine[1]
        cores = os.cpu_count() or 1
        machine = busy / max(1, total) * 100 * cores
        ours = (self.ours - earlier.ours) / (self.t - earlier.t) * 100
        return {
            "machine_pct": round(machine, 1),
            "ours_pct": round(ours, 1),
            "others_pct": round(max(0.0, machine - ours), 1),
        }


# --- the fleet --------------------------------------------------------------------------------


class Fleet:
    def __init__(self, workdir: Path, server: DevServerProcess) -> None:
        self.workdir = workdir
        self.server = server
        self.redis: RedisServer | None = None
        self.service: ServiceProcess | None = None
        self.client: Client | None = None
        self.receiver = WebhookReceiver()
        self.workers: dict[str, WorkerProcess] = {}
        self._generation = 0

    async def start(self) -> None:
        await self.receiver.start()
        self.redis = RedisServer(self.workdir / "redis").start()
        self.service = ServiceProcess(self.workdir / "service", "--redis", self.redis.url)
        self.service.start()
        self.client = Client(self.service.url)

    @property
    def api(self) -> Client:
        assert self.client is not None, "start() first"
        return self.client

    @property
    def redis_url(self) -> str:
        assert self.redis is not None, "start() first"
        return self.redis.url

    def pids(self) -> list[int]:
        """This process and every live process it started (CPU accounting)."""
        procs = [p.process for p in self.workers.values()]
        if self.service is not None and self.service.process is not None:
            procs.append(self.service.process)
        if self.redis is not None and self.redis.process is not None:
            procs.append(self.redis.process)
        pids = [p.pid for p in procs if p.poll() is None]
        if self.server.pid is not None:
            pids.append(self.server.pid)
        return [os.getpid(), *pids]

    async def start_workers(self, max_bots: int, count: int = 2) -> None:
        self._generation += 1
        for i in range(count):
            name = f"w{self._generation}{'abcdefgh'[i]}"
            self.workers[name] = WorkerProcess(
                self.redis_url, name, self.workdir / "workers", max_bots=max_bots
            )
        await wait_workers(self.api, len(self.workers), set(self.workers))

    async def stop_workers(self) -> None:
        for worker in self.workers.values():
            await asyncio.to_thread(stop_worker, worker)
        self.workers.clear()

    async def close(self) -> None:
        if self.client is not None:
            await self.api.aclose()
        await self.receiver.close()
        if self.service is not None:
            await asyncio.to_thread(stop_service, self.service)
        for worker in self.workers.values():
            worker.close()
        if self.redis is not None:
            self.redis.close()

    # --- what the service says --------------------------------------------------------------

    def states(self, ids: set[str]) -> dict[str, tuple[str, float]]:
        """The latest state webhook of each bot in `ids`: (state, timestamp)."""
        latest: dict[str, tuple[str, float]] = {}
        for event in self.receiver.events("bot.state_changed"):
            bot_id = event["data"]["bot_id"]
            if bot_id in ids:
                latest[bot_id] = (event["data"]["state"], iso_epoch(event["timestamp"]))
        return latest

    def media_times(self, ids: set[str]) -> dict[str, float]:
        return {
            e["data"]["bot_id"]: iso_epoch(e["timestamp"])
            for e in self.receiver.events("bot.media_connected")
            if e["data"]["bot_id"] in ids
        }

    async def wait_webhooks(self, check: Any, within: float) -> bool:
        try:
            await self.receiver.wait_for(check, within=within)
            return True
        except AssertionError:
            return False

    async def bots(self, ids: list[str]) -> list[dict[str, Any]]:
        return [await self.api.bot(i) for i in ids]

    # --- one pair per meeting -----------------------------------------------------------------

    def pairs(self, label: str, count: int, partner_role: str) -> list[list[dict[str, Any]]]:
        """Per meeting: [the partner's request, the caller's request]."""
        out = []
        url = self.server.url
        for i in range(count):
            caller, partner = f"{label}-a{i:03d}", f"{label}-b{i:03d}"
            meeting = self.server.meeting(caller, [partner], title=f"fleet {label} {i}")
            if partner_role == "bot":
                partner_body = bot_body(url, meeting, self.server.token(partner), self.receiver,
                                        media=TONE)  # fmt: skip
            else:
                partner_body = bot_body(
                    url, meeting, self.server.token(partner), self.receiver, role=partner_role
                )
            caller_body = bot_body(url, meeting, self.server.token(caller), self.receiver,
                                   media=TONE, settings=CALLER)  # fmt: skip
            out.append([partner_body, caller_body])
        return out

    async def launch(
        self, pairs: list[list[dict[str, Any]]], rate: float = 0.0
    ) -> tuple[list[str], float]:
        """POST the partners, then the callers, `rate` a second (0: as fast as they are
        answered); their ids and the first POST's time."""
        ids: list[str] = []
        first = time.time()
        for index in (0, 1):
            for pair in pairs:
                if rate > 0:
                    await asyncio.sleep(max(0.0, first + len(ids) / rate - time.time()))
                response = await self.api.create(pair[index])
                if response.status_code != 201:
                    raise RuntimeError(f"POST /v1/bots: {response.status_code} {response.text}")
                ids.append(response.json()["id"])
        return ids, first

    async def until_up(self, ids: list[str], first: float, within: float) -> dict[str, Any]:
        """Until every bot is in_meeting and media_connected (or `within`); the times."""
        wanted = set(ids)

        def up() -> bool:
            states = self.states(wanted)
            in_meeting = sum(s == "in_meeting" for s, _ in states.values())
            return in_meeting == len(wanted) and len(self.media_times(wanted)) == len(wanted)

        complete = await self.wait_webhooks(up, within)
        bots = await self.bots(ids)
        joined = [t for b in bots if (t := at(b, "in_meeting")) is not None]
        media = self.media_times(wanted)
        return {
            "complete": complete,
            "in_meeting": sum(b["state"] == "in_meeting" for b in bots),
            "media_connected": len(media),
            "not_in_meeting": {
                b["id"]: f"{b['state']}/{b['reason']}" for b in bots if b["state"] != "in_meeting"
            },
            "all_in_meeting_s": max(joined) - first if len(joined) == len(ids) else None,
            "all_media_s": max(media.values()) - first if len(media) == len(ids) else None,
            "in_meeting_p50_s": percentile([t - first for t in joined], 50),
        }

    async def delete_all(self, ids: list[str]) -> dict[str, Any]:
        first = time.time()
        for bot_id in ids:
            await self.api.http.delete(f"/v1/bots/{bot_id}")
        wanted = set(ids)
        complete = await self.wait_webhooks(
            lambda: sum(s in FINAL for s, _ in self.states(wanted).values()) == len(wanted),
            END_TIMEOUT_S,
        )
        bots = await self.bots(ids)
        ends = [t for b in bots if b["state"] in FINAL and (t := at(b, b["state"])) is not None]
        bad = {
            b["id"]: f"{b['state']}/{b['reason']}"
            for b in bots
            if (b["state"], b["reason"]) != ("ended", "requested")
        }
        return {
            "complete": complete,
            "ended_requested": len(ids) - len(bad),
            "failures": len(bad),
            "failed": bad,
            "all_ended_s": max(ends) - first if len(ends) == len(ids) else None,
        }

    @contextlib.asynccontextmanager
    async def heartbeats(self) -> AsyncIterator[dict[str, float]]:
        """While inside: the lowest time to live (s) seen on each worker's heartbeat key, read
        every 100 ms (the key lives ALIVE_TTL_S after each heartbeat; at 0 the service counts
        the worker lost)."""
        lowest: dict[str, float] = {}
        client = redis.Redis.from_url(self.redis_url)

        async def watch() -> None:
            while True:
                for name in list(self.workers):
                    ttl = max(0, await client.pttl(alive_key(name))) / 1000
                    lowest[name] = min(lowest.get(name, ALIVE_TTL_S), ttl)
                await asyncio.sleep(0.1)

        task = asyncio.create_task(watch())
        try:
            yield lowest
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await client.aclose()

    async def report_lag(self, since: float) -> dict[str, dict[str, float | None]]:
        """Per worker, how late its reports reached Redis since `since` (Unix s): each entry of
        the events stream is stamped by Redis when added, and carries `t`, when the worker's bot
        emitted it; the difference is the time the report waited in the worker."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        lags: dict[str, list[float]] = {}
        try:
            start = f"{int(since * 1000)}-0"
            while True:
                entries = await client.xrange(EVENTS, min=start, count=5000)
                for entry_id, fields in entries:
                    message = json.loads(fields["m"])
                    if "t" in message:
                        added = int(entry_id.split("-")[0]) / 1000
                        lags.setdefault(message["worker"], []).append(added - message["t"])
                if len(entries) < 5000:
                    break
                last_ms, last_seq = entries[-1][0].split("-")
                start = f"{last_ms}-{int(last_seq) + 1}"
        finally:
            await client.aclose()
        return {
            w: {"reports": len(v), "p50_s": percentile(v, 50), "max_s": max(v)}
            for w, v in sorted(lags.items())
        }

    async def running(self) -> dict[str, int]:
        """Bots each of our workers runs, as its last heartbeat in Redis says."""
        client = redis.Redis.from_url(self.redis_url, decode_responses=True)
        try:
            counts = {}
            for name in self.workers:
                beat = await client.get(alive_key(name))
                counts[name] = len(json.loads(beat).get("bots", [])) if beat else 0
            return counts
        finally:
            await client.aclose()

    async def idle(self, within: float = IDLE_TIMEOUT_S) -> dict[str, int]:
        """Until no worker of ours runs a bot, or `within`; what each still runs."""
        deadline = time.monotonic() + within
        while True:
            counts = await self.running()
            if not any(counts.values()) or time.monotonic() > deadline:
                return counts
            await asyncio.sleep(0.5)


def received(bot: dict[str, Any]) -> bool:
    """Whether the bot's connections received media (every one it has, at least one)."""
    connections = bot["connections"]
    return bool(connections) and all(c["packets_received"] > 0 for c in connections)


# --- a rung ---------------------------------------------------------------------------------------


async def run_rung(
    fleet: Fleet, role: str, meetings: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One rung on two fresh workers (nothing left over from the rung before)."""
    await fleet.start_workers(args.max_bots)
    try:
        return await _rung(fleet, role, meetings, args)
    finally:
        await fleet.stop_workers()


async def _rung(fleet: Fleet, role: str, meetings: int, args: argparse.Namespace) -> dict[str, Any]:
    await asyncio.sleep(SETTLE_S)
    idle0 = Sample(fleet.workers, fleet.pids())
    await asyncio.sleep(args.idle)
    idle1 = Sample(fleet.workers, fleet.pids())
    row: dict[str, Any] = {"role": role, "meetings": meetings, "bots": 2 * meetings}
    pairs = await asyncio.to_thread(fleet.pairs, f"{role}{meetings}", meetings, role)
    async with fleet.heartbeats() as lowest:
        ids, first = await fleet.launch(pairs, args.rate)
        row["post_s"] = time.time() - first
        up = await fleet.until_up(ids, first, RAMP_TIMEOUT_S + row["post_s"])
        row.update(up)
        row["heartbeat_ttl_min_ramp_s"] = dict(lowest)
        row["cpu_ramp"] = Sample(fleet.workers, fleet.pids()).machine_since(idle1)
        row["report_lag_ramp"] = await fleet.report_lag(first)
        print(
            f"# {role}: {up['in_meeting']}/{len(ids)} in_meeting in "
            f"{secs(up['all_in_meeting_s'])}, {up['media_connected']} media_connected in "
            f"{secs(up['all_media_s'])}; heartbeat TTL min {fmt_ttl(lowest)}; reports' lag "
            f"{fmt_lag(row['report_lag_ramp'])}",
            file=sys.stderr,
            flush=True,
        )
        lowest.clear()
        hold0 = Sample(fleet.workers, fleet.pids())
        await asyncio.sleep(args.hold)
        hold1 = Sample(fleet.workers, fleet.pids())
        row["heartbeat_ttl_min_hold_s"] = dict(lowest)
    bots = await fleet.bots(ids)
    per_worker: dict[str, int] = {w: 0 for w in fleet.workers}
    for b in bots:
        if b["worker"] in per_worker:
            per_worker[b["worker"]] += 1
    idle_cpu = idle1.cpu_pct_since(idle0)
    hold_cpu = hold1.cpu_pct_since(hold0)
    row["cpu_hold"] = hold1.machine_since(hold0)
    row["workers"] = {
        w: {
            "bots": n,
            "rss_idle_mib": round(idle1.rss[w], 1),
            "rss_during_mib": round(hold1.rss[w], 1),
            "mib_per_bot": round((hold1.rss[w] - idle1.rss[w]) / n, 2) if n else None,
            "cpu_idle_pct": round(idle_cpu[w], 1),
            "cpu_during_pct": round(hold_cpu[w], 1),
            "cpu_pct_per_bot": round((hold_cpu[w] - idle_cpu[w]) / n, 2) if n else None,
        }
        for w, n in per_worker.items()
    }
    # the whole rung, both workers together (robust to how the bots were spread): per meeting
    growth = sum(hold1.rss[w] - idle1.rss[w] for w in per_worker)
    cpu = sum(hold_cpu[w] - idle_cpu[w] for w in per_worker)
    row["per_meeting"] = {"mib": round(growth / meetings, 2), "cpu_pct": round(cpu / meetings, 2)}
    row["in_meeting_after_hold"] = sum(b["state"] == "in_meeting" for b in bots)
    row["requeued_worker_lost"] = lost(bots)
    # The partners' requests went first: bots[:meetings] are the partners (of the rung's role),
    # the rest the calling bots. A recorder or a transcriber sends nothing: only the partners
    # of those rungs receive media.
    receivers = bots if role == "bot" else bots[:meetings]
    row["receivers"] = len(receivers)
    row["received_media"] = sum(received(b) for b in receivers)
    row["no_media"] = [b["id"] for b in receivers if not received(b)]
    if role == "transcriber":
        row["transcript_chunks"] = sum(b["transcript"]["chunks"] for b in bots[:meetings])
    ended = await fleet.delete_all(ids)
    row.update(ended)
    # bots a worker still runs once the service says all are final: left in their meetings
    row["still_running"] = sum((await fleet.idle()).values())
    ttl_min = min(
        [*row["heartbeat_ttl_min_ramp_s"].values(), *row["heartbeat_ttl_min_hold_s"].values()]
    )
    row["held"] = (
        up["complete"]
        and row["in_meeting_after_hold"] == row["bots"]
        and row["received_media"] == row["receivers"]
        and row["requeued_worker_lost"] == 0
        and ended["failures"] == 0
        and row["still_running"] == 0
        and ttl_min > 0
    )
    print(
        f"# {role}: hold {args.hold:.0f} s: {row['in_meeting_after_hold']} still in_meeting, "
        f"received media {row['received_media']}/{row['receivers']}; deleted: "
        f"{ended['ended_requested']}/{len(ids)} "
        f"ended/requested in {secs(ended['all_ended_s'])}",
        file=sys.stderr,
        flush=True,
    )
    return row


# --- recovery ------------------------------------------------------------------------------------


async def run_recovery(fleet: Fleet, meetings: int, rate: float) -> dict[str, Any]:
    pairs = await asyncio.to_thread(fleet.pairs, "recovery", meetings, "bot")
    async with fleet.heartbeats() as lowest:
        ids, first = await fleet.launch(pairs, rate)
        up = await fleet.until_up(ids, first, RAMP_TIMEOUT_S + time.time() - first)
    up["heartbeat_ttl_min_ramp_s"] = dict(lowest)
    up["requeued_worker_lost"] = lost(await fleet.bots(ids))
    row: dict[str, Any] = {"meetings": meetings, "bots": len(ids), "up": up}
    if not up["complete"]:
        row["error"] = "not every bot was in_meeting and connected before the kill"
    await asyncio.sleep(SETTLE_S)
    bots = await fleet.bots(ids)
    on: dict[str, list[str]] = {w: [] for w in fleet.workers}
    for b in bots:
        if b["state"] == "in_meeting" and b["worker"] in on:
            on[b["worker"]].append(b["id"])
    victim = max(on, key=lambda w: len(on[w]))
    moved = on[victim]
    row["per_worker_before"] = {w: len(v) for w, v in on.items()}
    row["killed"] = victim
    row["moved"] = len(moved)
    print(f"# recovery: SIGKILL {victim} with {len(moved)} bots", file=sys.stderr, flush=True)
    killed_at = time.time()
    fleet.workers[victim].process.send_signal(signal.SIGKILL)
    await asyncio.to_thread(fleet.workers[victim].process.wait)
    wanted = set(moved)

    def back() -> bool:
        states = fleet.states(wanted)
        return sum(s == "in_meeting" and t > killed_at for s, t in states.values()) == len(wanted)

    row["complete"] = await fleet.wait_webhooks(back, RECOVERY_TIMEOUT_S)
    bots = await fleet.bots(moved)
    detect, dispatch, rejoin, total = [], [], [], []
    not_back = {}
    for b in bots:
        requeued = next(
            (h for h in b["history"] if h["state"] == "queued" and h["reason"] == "worker_lost"),
            None,
        )
        joining, in_meeting = at(b, "joining", 2), at(b, "in_meeting", 2)
        if requeued is None or joining is None or in_meeting is None or b["state"] != "in_meeting":
            not_back[b["id"]] = f"{b['state']}/{b['reason']} on {b['worker']}"
            continue
        detect.append(requeued["at"] - killed_at)
        dispatch.append(joining - requeued["at"])
        rejoin.append(in_meeting - joining)
        total.append(in_meeting - killed_at)
    row["back"] = len(total)
    row["not_back"] = not_back
    row["workers_after"] = sorted({b["worker"] for b in bots if b["worker"] is not None})

    def split(values: list[float]) -> dict[str, float | None]:
        return {"p50": percentile(values, 50), "max": max(values) if values else None}

    row["detection_s"] = split(detect)
    row["dispatch_s"] = split(dispatch)
    row["rejoin_s"] = split(rejoin)
    row["kill_to_in_meeting_s"] = split(total)
    row["all_back_s"] = max(total) if total and not not_back else None
    row["target_s"] = RECOVERY_TARGET_S
    row["pass"] = row["all_back_s"] is not None and row["all_back_s"] <= RECOVERY_TARGET_S
    # media again: a moved bot announces no second media_connected; its connections say (each
    # one is new: the bot runs in a new process, and a connection is up both ways or not at all)
    # split by the moved bot's part in its pair: a caller calls its partner again at once, a
    # partner waits for its caller to call its new session
    callers = set(ids[len(pairs) :])
    deadline = time.monotonic() + MEDIA_BACK_TIMEOUT_S
    row["media_back_s"] = None
    media_back: dict[str, float] = {}
    while time.monotonic() < deadline:
        moved_now = await fleet.bots(moved)
        for b in moved_now:
            if b["id"] not in media_back and any(
                c["state"] == "connected" for c in b["connections"]
            ):
                media_back[b["id"]] = time.time() - killed_at
        if len(media_back) == len(moved):
            row["media_back_s"] = max(media_back.values())
            break
        await asyncio.sleep(0.5)
    row["media_back"] = len(media_back)
    row["media_back_callers_s"] = split([t for b, t in media_back.items() if b in callers])
    row["media_back_partners_s"] = split([t for b, t in media_back.items() if b not in callers])
    ended = await fleet.delete_all(ids)
    ended["still_running"] = sum((await fleet.idle()).values())
    row["end"] = ended
    return row


# --- output -------------------------------------------------------------------------------------


def fmt(value: Any, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


def fmt_ttl(lowest: dict[str, float]) -> str:
    return ", ".join(f"{w} {t:.1f} s" for w, t in sorted(lowest.items())) or "-"


def fmt_lag(lag: dict[str, dict[str, Any]]) -> str:
    return ", ".join(f"{w} p50 {secs(v['p50_s'])} max {secs(v['max_s'])}" for w, v in lag.items())


def lost(bots: list[dict[str, Any]]) -> int:
    """Bots whose worker was counted lost at least once."""
    return sum(any(h["reason"] == "worker_lost" for h in b["history"]) for b in bots)


def print_rungs(rows: list[dict[str, Any]]) -> None:
    print(
        f"{'role':<12} {'meet':>4} {'bots':>4} {'in_meeting':>10} {'all in':>7} {'all media':>9} "
        f"{'held':>5} {'rx media':>9} {'ended ok':>8} {'all ended':>9} {'requeued':>8} "
        f"{'left':>4} {'TTL min':>7} {'lag max':>7}  verdict"
    )
    for r in rows:
        ttl = min(
            [*r["heartbeat_ttl_min_ramp_s"].values(), *r["heartbeat_ttl_min_hold_s"].values()]
        )
        lag = max((v["max_s"] for v in r["report_lag_ramp"].values()), default=None)
        print(
            f"{r['role']:<12} {r['meetings']:>4} {r['bots']:>4} "
            f"{r['in_meeting']:>4}/{r['bots']:<5} {secs(r['all_in_meeting_s']):>7} "
            f"{secs(r['all_media_s']):>9} {r['in_meeting_after_hold']:>5} "
            f"{r['received_media']:>4}/{r['receivers']:<4} "
            f"{r['ended_requested']:>8} {secs(r['all_ended_s']):>9} "
            f"{r['requeued_worker_lost']:>8} {r['still_running']:>4} {secs(ttl):>7} "
            f"{secs(lag):>7}  {'held' if r['held'] else 'NOT held'}"
        )
    print(
        f"\n{'role':<12} {'worker':<7} {'bots':>4} {'RSS idle':>9} {'RSS held':>9} "
        f"{'MiB/bot':>8} {'CPU idle':>8} {'CPU held':>8} {'CPU%/bot':>8}"
    )
    for r in rows:
        for w, s in r["workers"].items():
            print(
                f"{r['role']:<12} {w:<7} {s['bots']:>4} {s['rss_idle_mib']:>7.1f} M "
                f"{s['rss_during_mib']:>7.1f} M {fmt(s['mib_per_bot']):>8} "
                f"{s['cpu_idle_pct']:>7.1f}% {s['cpu_during_pct']:>7.1f}% "
                f"{fmt(s['cpu_pct_per_bot']):>8}"
            )
        pair = r["per_meeting"]
        print(
            f"{r['role']:<12} both workers, per meeting (2 bots): {pair['mib']:.2f} MiB, "
            f"{pair['cpu_pct']:.2f} % of a core"
        )


def print_machine(rows: list[dict[str, Any]]) -> None:
    print(f"\n{'role':<12} {'meet':>4}  machine CPU, % of one core: ours / others' (ramp; hold)")
    for r in rows:
        ramp, hold = r["cpu_ramp"], r["cpu_hold"]
        print(
            f"{r['role']:<12} {r['meetings']:>4}  {ramp['ours_pct']:.0f} / {ramp['others_pct']:.0f}"
            f"; {hold['ours_pct']:.0f} / {hold['others_pct']:.0f}"
        )


def print_recovery(r: dict[str, Any]) -> None:
    verdict = "PASS" if r["pass"] else "FAIL"
    print(
        f"\nrecovery: {r['bots']} bots on {r['per_worker_before']}; SIGKILL {r['killed']} "
        f"({r['moved']} bots): {r['back']}/{r['moved']} in_meeting again on "
        f"{', '.join(r['workers_after'])}, the last {secs(r['all_back_s'])} after the kill -> "
        f"{verdict} (<= {RECOVERY_TARGET_S:.0f} s)"
    )
    up = r["up"]
    print(
        f"  before the kill: {up['in_meeting']}/{r['bots']} in_meeting, "
        f"{up['media_connected']} media_connected, {up['requeued_worker_lost']} queued again "
        f"for a lost worker, heartbeat TTL min {fmt_ttl(up['heartbeat_ttl_min_ramp_s'])}"
    )
    for key, label in (
        ("detection_s", "detection (kill -> queued/worker_lost)"),
        ("dispatch_s", "dispatch (queued -> joining)"),
        ("rejoin_s", "rejoin (joining -> in_meeting)"),
        ("kill_to_in_meeting_s", "kill -> in_meeting"),
    ):
        print(f"  {label:<40} p50 {secs(r[key]['p50'])}, max {secs(r[key]['max'])}")
    print(
        f"  media back (every moved bot has a connection up): {r['media_back']}/{r['moved']}, "
        f"{secs(r['media_back_s'])} after the kill; end: {r['end']['ended_requested']}/"
        f"{r['bots']} ended/requested"
    )
    for key, label in (("media_back_callers_s", "callers"), ("media_back_partners_s", "partners")):
        if key in r:
            p50, top = secs(r[key]["p50"]), secs(r[key]["max"])
            print(f"  media back, moved {label:<21} p50 {p50}, max {top}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rungs", nargs="*", choices=["bot", "recorder", "transcriber"],
        default=["bot", "recorder", "transcriber"],
    )  # fmt: skip
    parser.add_argument(
        "--meetings", type=int, nargs="+", default=[50], help="pairs of bots: a rung each"
    )
    parser.add_argument("--recorder-meetings", type=int, nargs="+", default=[10, 20, 30, 50])
    parser.add_argument("--transcriber-meetings", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument(
        "--rate", type=float, default=3.0, help="POSTs a second (0: all at once, one by one)"
    )
    parser.add_argument("--hold", type=float, default=20.0, help="seconds, once all are up")
    parser.add_argument("--idle", type=float, default=5.0, help="idle sample, seconds")
    parser.add_argument("--max-bots", type=int, default=60, help="per worker, for the rungs")
    parser.add_argument("--recovery-meetings", type=int, default=20, help="0: no recovery")
    parser.add_argument("--recovery-max-bots", type=int, default=60, help="per worker")
    parser.add_argument(
        "--recovery-workers", type=int, default=2, help="workers before the kill (at least 2)"
    )
    parser.add_argument(
        "--deadline", type=float, default=1800.0, help="seconds: the whole run, at most"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    parser.add_argument("--keep", type=Path, default=None, help="keep logs under this directory")
    args = parser.parse_args()
    if not 2 <= args.recovery_workers <= 8:
        parser.error("--recovery-workers: 2 to 8 (one is killed, the others take its bots)")
    meetings = {
        "bot": args.meetings,
        "recorder": args.recorder_meetings,
        "transcriber": args.transcriber_meetings,
    }
    rows: list[dict[str, Any]] = []
    recovery: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = tempfile.mkdtemp(prefix="service-fleet-", dir=args.keep)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="service-fleet-"))
        workdir = Path(tmp)
        server = stack.enter_context(DevServerProcess(workdir / "devserver.sqlite"))
        fleet = Fleet(workdir, server)
        try:
            async with asyncio.timeout(args.deadline):
                await fleet.start()
                for role in args.rungs:
                    for count in meetings[role]:
                        rows.append(await run_rung(fleet, role, count, args))
                if args.recovery_meetings:
                    await fleet.start_workers(args.recovery_max_bots, args.recovery_workers)
                    recovery = await run_recovery(fleet, args.recovery_meetings, args.rate)
        finally:
            await fleet.close()
    if rows:
        print_rungs(rows)
        print_machine(rows)
    if recovery is not None:
        print_recovery(recovery)
    if args.json is not None:
        args.json.write_text(json.dumps({"rungs": rows, "recovery": recovery}, indent=2) + "\n")
    ok = all(r["held"] for r in rows)
    return 0 if ok and (recovery is None or recovery["pass"]) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
