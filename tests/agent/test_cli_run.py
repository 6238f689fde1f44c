"""`connvo-agent run` as a real process: joins, connects, and leaves cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.agent.conftest import Meeting, make_meeting
from tests.agent.test_negotiation import TIMEOUT
from tests.support.waiting import poll_until


async def start_agent(
    meeting: Meeting,
    tmp_path: Path,
    *extra: str,
    command: tuple[str, ...] = (sys.executable, "-m", "agent"),
    **popen: Any,
) -> asyncio.subprocess.Process:
    """`connvo-agent run` as the bot of `meeting` (`command`: how to start connvo-agent)."""
    token_file = tmp_path / "token"
    token_file.write_text(meeting.tokens["bot"])
    return await asyncio.create_subprocess_exec(
        *command,
        "run",
        "--url",
        meeting.server.url,
        "--token-file",
        str(token_file),
        "--meeting",
        meeting.id,
        "--state-dir",
        str(tmp_path / "state"),
        "--ice-host",
        "127.0.0.1",
        "--log-level",
        "debug",
        *extra,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        **popen,
    )


async def call_agent(meeting: Meeting, peer) -> None:
    """Wait until the agent process has joined (its session shows at the backend), then offer."""
    async with asyncio.timeout(TIMEOUT):
        await poll_until(lambda: bot_session_states(meeting, peer))
    await peer.offer(meeting.users["bot"])


async def call_and_receive(meeting: Meeting, peer) -> None:
    """Call the agent process; return once the peer is connected and has its audio and video."""
    await call_agent(meeting, peer)
    async with asyncio.timeout(TIMEOUT):
        await peer.connected.wait()
        await peer.received.audio.wait()
        await peer.received.video.wait()


async def bot_session_states(meeting: Meeting, peer) -> dict[str, str]:
    active = await peer.call("meetings/webrtc/signaling/getActiveSessions", meetingId=meeting.id)
    return {s["sessionId"]: s["state"] for s in active if s["userId"] == meeting.users["bot"]}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_run_connects_and_leaves_on_signal(
    meeting: Meeting, tmp_path: Path, signum: int
) -> None:
    proc = await start_agent(meeting, tmp_path, "--audio", "tone", "--video", "testsrc")
    try:
        async with meeting.peer("alice") as alice:
            await call_and_receive(meeting, alice)
            sent_at = time.monotonic()
            proc.send_signal(signum)
            async with asyncio.timeout(5.0):
                code = await proc.wait()
            assert code == 0
            assert time.monotonic() - sent_at < 5.0
            _, stderr = await proc.communicate()
            log = stderr.decode()
            # Closed, reported and left at the backend:
            assert await bot_session_states(meeting, alice) == {}
            participants = await alice.call(
                "meetings/queries/listMeetingParticipants", meetingId=meeting.id
            )
            bot = next(p for p in participants if p["userId"] == meeting.users["bot"])
            assert bot["presence"] == "left"
            assert "left meeting" in log
            # The default `--receive count`: RTP counted from the connection, nothing decoded.
            packets = re.search(r"received (\d+) RTP packets\n", log)
            assert packets is not None and int(packets.group(1)) > 0, log[-2000:]
            # The connection's quality over the call, measured at its close: loopback loses
            # nothing, and the MOS received is above G.107's "satisfied" (what the far end
            # reports of what the bot sent needs a receiver report, which a call this short
            # may not have had yet).
            quality = re.search(
                r"session \S+ quality: over \d+ s; in MOS (\d\.\d\d) \(min \d\.\d\d\), "
                r"loss 0\.0 %.*; out MOS .*; RTT (\d+ ms|unknown)\n",
                log,
            )
            assert quality is not None, log[-2000:]
            assert float(quality.group(1)) > 4.0
            # Debug logging never shows the token.
            assert meeting.tokens["bot"] not in log
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_receive_decode_counts_decoded_frames(meeting: Meeting, tmp_path: Path) -> None:
    proc = await start_agent(meeting, tmp_path, "--receive", "decode", "--video", "none")
    try:
        async with meeting.peer("alice") as alice:
            await call_agent(meeting, alice)

            async def a_second_of_media() -> bool:
                # media has flowed both ways for a second: the agent has decoded some too
                return alice.received.audio_frames >= 50

            async with asyncio.timeout(TIMEOUT):
                await alice.connected.wait()
                await poll_until(a_second_of_media)
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5.0):
                assert await proc.wait() == 0
            _, stderr = await proc.communicate()
            log = stderr.decode()
            frames = re.search(r"received (\d+) RTP packets, (\d+) audio frames, (\d+) video", log)
            assert frames is not None, log[-2000:]
            # alice sends audio and video; each decoded audio frame came in one RTP packet
            assert 0 < int(frames.group(2)) <= int(frames.group(1))
            assert int(frames.group(3)) > 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audio", "/nonexistent.wav"], "audio source '/nonexistent.wav'"),
        (["--metrics-port", "0"], "metrics_port"),
        (["--metrics-port"], "Option '--metrics-port' requires an argument"),
        (["--no-such-flag"], "No such option '--no-such-flag'"),
    ],
)
async def test_bad_flags_exit_with_one_line(meeting: Meeting, tmp_path: Path, args, message):
    proc = await start_agent(meeting, tmp_path, *args)
    async with asyncio.timeout(TIMEOUT):
        _, stderr = await proc.communicate()
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1, lines
    assert lines[0].startswith("connvo-agent: error:")
    assert message in lines[0]


async def one_line_failure(meeting: Meeting, tmp_path: Path) -> str:
    """Run the agent until it exits; it must fail with exactly one line (no traceback)."""
    proc = await start_agent(meeting, tmp_path, "--log-level", "error")
    async with asyncio.timeout(TIMEOUT):
        _, stderr = await proc.communicate()
    lines = [line for line in stderr.decode().splitlines() if line.strip()]
    assert proc.returncode == 1, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith("connvo-agent: error: backend: ")
    return lines[0]


async def test_a_token_of_no_connvo_user_is_one_line(meeting: Meeting, tmp_path: Path) -> None:
    # The token verifies, but its identity has no Connvo user: getCurrentUser answers null.
    stranger = dataclasses.replace(
        meeting, tokens={**meeting.tokens, "bot": meeting.server.token_without_user("stranger")}
    )
    line = await one_line_failure(stranger, tmp_path)
    assert "not a Connvo user" in line


@pytest.mark.parametrize(("error_status", "redact"), [(200, False), (400, True), (560, True)])
async def test_joining_a_scheduled_meeting_is_one_line(
    devserver_factory: Any, tmp_path: Path, error_status: int, redact: bool
) -> None:
    # The reason comes from errorData, also from a production deployment (whose errorMessage says
    # only "Server Error"), whatever the status the error envelope comes with.
    server = devserver_factory(error_status=error_status, redact=redact)
    meeting = make_meeting(server, ["bot", "alice"])
    scheduled = server.meeting("alice", ["bot"], state="scheduled")
    line = await one_line_failure(dataclasses.replace(meeting, id=scheduled), tmp_path)
    assert "VALIDATION_ERROR: Cannot join inactive meeting" in line
    if redact:
        assert "Request ID" not in line


async def test_metrics_served_while_running(meeting: Meeting, tmp_path: Path) -> None:
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await start_agent(meeting, tmp_path, "--metrics-port", str(port), "--video", "none")
    try:
        async with meeting.peer("alice") as alice:
            await call_agent(meeting, alice)
            async with asyncio.timeout(TIMEOUT):
                await alice.received.audio.wait()
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            values = {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in text.splitlines()
                if line and not line.startswith("#")
            }
            assert values["connvo_agent_signals_applied_total"] >= 1
            assert values['connvo_agent_sessions{state="connected"}'] == 1
            assert values["connvo_agent_time_to_connected_seconds_count"] == 1
            assert meeting.tokens["bot"] not in text
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(5.0):
                assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
