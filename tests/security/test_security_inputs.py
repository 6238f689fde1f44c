"""What a remote peer sends cannot make the agent resolve a name, open a file or reach an address
that ICE does not need; and a full `connvo-agent run` session at debug level, with backend faults
(so error paths log too), never writes its token anywhere: stdout, stderr, metrics, state files."""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.agent.conftest import Meeting
from tests.faults.helpers import bot_sessions, start_agent_process, stop_process
from tests.faults.peers_proc import RetryingPeer
from tests.support.waiting import poll_until

EVIL_HOST = "evil-host.invalid"
MDNS = "0f3a5b1c-9d2e-4f60-8a71-b2c3d4e5f607.local"
_recording: list[tuple[str, tuple[Any, ...]]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _recording is not None and event in ("socket.getaddrinfo", "socket.gethostbyname",
                                            "socket.connect", "socket.sendto", "open",
                                            "urllib.Request", "subprocess.Popen"):  # fmt: skip
        _recording.append((event, args))


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only while a test asks


async def test_hostnames_and_paths_in_signals_are_never_touched(
    meeting: Meeting, agent_factory: Any
) -> None:
    global _recording
    agent = await agent_factory(meeting)
    bot = meeting.users["bot"]
    events: list[tuple[str, tuple[Any, ...]]] = []
    _recording = events
    try:
        async with meeting.peer("alice", video=False) as alice:
            alice.remote_user_id = bot
            await alice._new_pc()
            assert alice.pc is not None
            await alice.pc.setLocalDescription(await alice.pc.createOffer())
            lines = alice.pc.localDescription.sdp.splitlines()
            mid = next(i for i, line in enumerate(lines) if line.startswith("a=mid:"))
            lines[mid + 1 : mid + 1] = [
                f"a=candidate:7 1 udp 2130706431 {EVIL_HOST} 9 typ host",
                f"a=candidate:8 1 udp 2130706431 {MDNS} 9 typ host",
                "a=x-include:file:///etc/passwd",
                f"a=x-url:http://{EVIL_HOST}/x",
            ]
            await alice.send_ice({"candidate": f"candidate:9 1 udp 1 {EVIL_HOST} 9 typ host",
                                  "sdpMid": "0", "sdpMLineIndex": 0}, bot)  # fmt: skip
            await alice.send_sdp("offer", "\r\n".join(lines) + "\r\n", bot)
            for name in (EVIL_HOST, MDNS):
                await alice.send_ice({"candidate": f"candidate:5 1 udp 1 {name} 4 typ host",
                                      "sdpMid": "0", "sdpMLineIndex": 0}, bot)  # fmt: skip
            async with asyncio.timeout(30):
                await alice.connected.wait()
                await alice.received.audio.wait()
                session = await agent.manager.wait_session(alice.session_id)
                await session.connected.wait()
    finally:
        _recording = None
    named = [e for e in events if any(n in repr(e[1]) for n in (EVIL_HOST, MDNS, "passwd"))]
    assert named == [], named
    # Every address contacted is loopback (ICE on 127.0.0.1, the dev backend on 127.0.0.1).
    for event, args in events:
        if event in ("socket.connect", "socket.sendto"):
            address = args[-1]
            assert isinstance(address, tuple) and address[0] == "127.0.0.1", (event, args)
    assert any(e == "socket.sendto" for e, _ in events)  # the recorder did see ICE traffic


async def test_token_never_written_anywhere(meeting: Meeting, tmp_path: Path) -> None:
    token = meeting.tokens["bot"]
    secrets = [token, token.split(".")[-1]]  # the whole token and its signature alone
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = meeting.server
    state_dir = tmp_path / "state"
    agent = await start_agent_process(
        server, token, meeting.id, state_dir, "--audio", "tone", "--metrics-port", str(port),
        "--log-format", "json",
    )  # fmt: skip
    metrics = ""
    try:
        async with RetryingPeer(server.url, meeting.tokens["alice"], meeting.id,
                                meeting.users["alice"], video=False) as alice:  # fmt: skip
            async with asyncio.timeout(30):
                await poll_until(
                    lambda: bot_sessions(
                        server.url, meeting.tokens["alice"], meeting.id, meeting.users["bot"]
                    )
                )
            # Errors and retries get logged too.
            server.set_faults(error_rate=0.3, rate_limit_rate=0.1, retry_after_s=0, seed=4)
            await alice.offer(meeting.users["bot"])
            async with asyncio.timeout(30):
                await alice.connected.wait()
                await alice.received.audio.wait()
            server.clear_faults()
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            assert "connvo_agent_backend_requests_total" in metrics
            agent.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                assert await agent.wait() == 0
    finally:
        await stop_process(agent)
    written = {"metrics": metrics.encode(), **await asyncio.to_thread(_files, tmp_path)}
    assert any("retrying" in v.decode(errors="replace") for v in written.values())
    for where, content in written.items():
        for secret in secrets:
            assert secret.encode() not in content, f"token found in {where}"


def _files(root: Path) -> dict[str, bytes]:
    """Everything the run wrote (logs, state database), except the token file it was given."""
    return {
        str(path): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file() and path.name != "bot.token"
    }
