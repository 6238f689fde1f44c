"""CPU per backend call: the agent's HTTP client on aiohttp's transport against httpx's own.

Both run in this process (uvloop) against one dev backend on loopback, alternating rounds, so
the machine's noise hits both alike. Each call is a `ConvexClient.run` of getPendingSignals (the
call a load worker makes most), measured as this process's CPU time per call:
- one caller: calls one after another (one pooled connection);
- 50 callers: fifty identities calling at once (fifty pooled connections, as in a load worker).

    python bench/http_cost.py [--calls 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from agent.cli.loop import run_async  # noqa: E402
from agent.convex import ConvexClient, TokenSource, make_http_client  # noqa: E402
from agent.devserver.process import DevServerProcess  # noqa: E402

FUNCTION = "meetings/webrtc/signaling/getPendingSignals"


def httpcore_client() -> httpx.AsyncClient:
    """The same client with httpx's default transport (httpcore, h11, anyio)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(10.0, connect=5.0),
        limits=httpx.Limits(max_connections=100),
        headers={"User-Agent": "connvo-agent"},
    )


async def cpu_per_call(
    http: httpx.AsyncClient, url: str, token: str, meeting: str, calls: int, callers: int
) -> float:
    clients = [ConvexClient(url, TokenSource(value=token), http=http) for _ in range(callers)]
    args = {"meetingId": meeting}
    for client in clients:  # warm: connections open, code paths hot
        await client.run(FUNCTION, args)

    async def caller(client: ConvexClient, n: int) -> None:
        for _ in range(n):
            await client.run(FUNCTION, args)

    started = time.process_time()
    await asyncio.gather(*(caller(c, calls // callers) for c in clients))
    return (time.process_time() - started) / (calls // callers * callers)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory() as tmp,
        DevServerProcess(Path(tmp) / "db.sqlite") as server,
    ):
        meeting = server.meeting("bot", ["p1"])
        token = server.token("p1")
        print(f"{'callers':>8} {'httpcore ms/call':>17} {'aiohttp ms/call':>16} {'ratio':>6}")
        for callers in (1, 50):
            got: dict[str, list[float]] = {"httpcore": [], "aiohttp": []}
            for _ in range(args.rounds):
                for name, make in (("httpcore", httpcore_client), ("aiohttp", make_http_client)):
                    async with make() as http:
                        got[name].append(
                            await cpu_per_call(
                                http, server.url, token, meeting, args.calls, callers
                            )
                        )
            old, new = statistics.median(got["httpcore"]), statistics.median(got["aiohttp"])
            print(f"{callers:>8} {1000 * old:>17.3f} {1000 * new:>16.3f} {old / new:>5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(run_async(main()))
