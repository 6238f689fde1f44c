"""100 sessions offered to `connvo-agent run` while the dev backend misbehaves in every way it can:
500s, hangs past the client's timeout, 429 storms with Retry-After, dropped connections, 2-second
responses, failing acknowledgements (before and after applying), duplicated deliveries, random IDs,
generation 1 with a stale backlog of 220 signals. Every session connects, and every signal the
backend holds for the agent was applied exactly once and acknowledged.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from agent.devserver.process import DevServerProcess
from tests.conftest import DevServerFactory
from tests.faults.helpers import (
    PeersProcess,
    agent_records,
    backend_signal_rows,
    backend_signals_to,
    send_stale_backlog,
    start_agent_process,
    stop_process,
)
from tests.support.waiting import poll_until

SESSIONS = 100
STALE = 220

# Phase A: errors of every kind, 10% 500s, 5% hanging past the agent's 3 s request timeout.
FAULTS_A = dict(
    error_rate=0.10, timeout_rate=0.05, timeout_s=4.0, rate_limit_rate=0.03, retry_after_s=1,
    drop_rate=0.02, ack_fail_rate=0.3, ack_fail_mode="before", duplicate_rate=0.2, seed=11,
)  # fmt: skip
# Phase B: every response takes 2 s to arrive, acks fail after applying, 429 storm.
FAULTS_B = dict(
    slow_body_ms=2000, error_rate=0.05, rate_limit_rate=0.10, retry_after_s=1, drop_rate=0.02,
    ack_fail_rate=0.3, ack_fail_mode="after", duplicate_rate=0.3, seed=12,
)  # fmt: skip


# About 90 s on the 2-core machine (100 peers negotiating through 500s, hangs and 429 storms);
# the suite-wide 120 s safety net is too tight for it on a cold virtualenv.
@pytest.mark.timeout(360)
async def test_hundred_sessions_under_faults(
    devserver_factory: DevServerFactory, tmp_path: Path
) -> None:
    started = time.monotonic()
    server: DevServerProcess = devserver_factory(generation=1, ids="random")
    names = [f"peer{i:03d}" for i in range(SESSIONS)]
    meeting = server.meeting("bot", [*names, "ghost"])
    bot_user = server.user_id("bot")
    peers = [{"token": server.token(n), "user_id": server.user_id(n)} for n in names]
    await send_stale_backlog(server.url, server.token("ghost"), meeting, bot_user, STALE)

    spec = {"url": server.url, "meeting": meeting, "target": bot_user, "peers": peers,
            "trickle": True, "timeout": 90, "request_timeout": 3.0, "light": True}  # fmt: skip
    state_dir = tmp_path / "state"
    async with PeersProcess.start(spec) as remote:
        server.set_faults(**FAULTS_A)
        agent = await start_agent_process(
            server, server.token("bot"), meeting, state_dir, "--audio", "silence",
            env={"CONNVO_REQUEST_TIMEOUT": "3", "CONNVO_MAX_RETRIES": "8"},
        )  # fmt: skip
        try:
            async with asyncio.timeout(100):
                await remote.offer(list(range(SESSIONS // 2)))
                server.set_faults(**FAULTS_B)
                await remote.offer(list(range(SESSIONS // 2, SESSIONS)))
            failed = [i for i in range(SESSIONS) if not remote.results[i]["connected"]]
            assert failed == [], f"{len(failed)} sessions did not connect: {failed[:10]}"
            connect_times = sorted(r["seconds"] for r in remote.results.values())

            # Faults off: the agent acknowledges everything it holds, and media flows.
            server.clear_faults()
            async with asyncio.timeout(30):
                await poll_until(lambda: _all_processed(server, bot_user))
            before = await remote.frames()
            async with asyncio.timeout(20):
                await poll_until(lambda: _all_grew(remote, before))

            # Everything sent so far is processed (waited for above); peers may still send
            # (an answer to an ICE restart, a retried candidate) while the agent is leaving.
            before_stop = set(backend_signals_to(server, bot_user))
            agent.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    assert await agent.wait() == 0
            except TimeoutError:
                await stop_process(agent)  # dumps its stacks to its stderr first
                tail = (tmp_path / "agent.stderr").read_text().splitlines()[-80:]
                raise AssertionError("no exit 15 s after SIGTERM:\n" + "\n".join(tail)) from None
        finally:
            await stop_process(agent)

    # Exactly once: everything the backend holds for the agent was handled once and acked.
    rows = backend_signal_rows(server, bot_user)
    records = agent_records(state_dir)
    assert len(rows) >= STALE + 2 * SESSIONS
    stderr = (tmp_path / "agent.stderr").read_text()
    assert "handled a second time" not in stderr
    missing = before_stop - set(records)
    assert not missing, [
        (sid, rows[sid], [line for line in stderr.splitlines() if sid in line][:5])
        for sid in missing
    ]
    assert all(rows[sid][0] for sid in before_stop)
    # Signals sent while the agent was leaving (peers still renegotiating) may or may not have been
    # handled; whatever was handled, late or not, was handled exactly once (below).
    repeated = {sid: r for sid, r in records.items() if r[1] != 1}
    assert repeated == {}
    assert all(acked for _, _, acked in records.values())
    outcomes = {o for o, _, _ in records.values()}
    assert outcomes <= {"applied", "ignored"}, outcomes
    assert "Traceback" not in stderr
    print(
        f"\n{SESSIONS} sessions under faults: connect median {connect_times[SESSIONS // 2]:.1f} s,"
        f" max {connect_times[-1]:.1f} s; {len(records)} signals handled once;"
        f" test took {time.monotonic() - started:.0f} s"
    )


async def _all_processed(server: DevServerProcess, user: str) -> bool:
    signals = await asyncio.to_thread(backend_signals_to, server, user)
    return bool(signals) and all(signals.values())


async def _all_grew(remote: PeersProcess, before: list[int]) -> bool:
    now = await remote.frames()
    return all(b > a for a, b in zip(before, now, strict=True))
