"""`connvo-agent serve` end to end: a real service process, its local workers, the dev backend,
real aiortc participants and a real webhook receiver.

One service process serves the whole module (each test looks only at the bots it made); the
metrics test has one of its own, since it counts every bot."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from agent.devserver.ids import make_id
from agent.devserver.process import DevServerProcess
from tests.agent.conftest import Meeting
from tests.roles.conftest import Speech, synthesise, track_ended
from tests.service.conftest import bot_request
from tests.support.service import SECRET, Client, ServiceProcess, WebhookReceiver

TIMEOUT = 30


@pytest.fixture(scope="module")
def service(shared_service: ServiceProcess) -> ServiceProcess:
    return shared_service


@pytest.fixture(scope="module")
def devserver(shared_devserver: DevServerProcess) -> DevServerProcess:
    return shared_devserver


def state_hooks(receiver: WebhookReceiver, bot_id: str) -> list[dict[str, Any]]:
    return [e for e in receiver.events("bot.state_changed") if e["data"]["bot_id"] == bot_id]


def history(bot: dict[str, Any]) -> list[str]:
    return [h["state"] for h in bot["history"]]


async def test_a_bot_joins_meets_a_participant_and_leaves_on_request(
    service: ServiceProcess, client: Client, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    response = await client.create(bot_request(meeting, receiver, metadata={"ticket": 7}))
    assert response.status_code == 201, response.text
    bot = response.json()
    assert bot["state"] == "queued" and bot["metadata"] == {"ticket": 7}
    assert "token" not in response.text and meeting.tokens["bot"] not in response.text
    await client.wait_state(bot["id"], "in_meeting")
    async with meeting.peer("alice", video=False) as alice:
        async with asyncio.timeout(TIMEOUT):
            await alice.offer(meeting.users["bot"])
            await alice.connected.wait()
        seen = await client.wait_for(bot["id"], lambda b: b["media_connected"])
        deleted = await client.http.delete(f"/v1/bots/{bot['id']}")
        assert deleted.status_code == 202
        final = await client.wait_state(bot["id"], "ended", "failed")
    assert final["state"] == "ended" and final["reason"] == "requested", final
    states = [h["state"] for h in final["history"]]
    assert states == ["queued", "joining", "in_meeting", "leaving", "ended"], final["history"]
    assert seen["participants"][0]["user_id"] == meeting.users["alice"]
    await receiver.wait_for(lambda: len(receiver.events("bot.state_changed")) == 5)
    hooks = receiver.events("bot.state_changed")
    assert [h["data"]["state"] for h in hooks] == states
    assert all(h["data"]["metadata"] == {"ticket": 7} for h in hooks)
    assert receiver.events("bot.media_connected")
    assert receiver.events("participant.joined")[0]["data"]["user_id"] == meeting.users["alice"]
    assert receiver.bad_signatures == 0
    # the bot gathered ICE candidates only where its worker's environment said
    # (CONNVO_ICE_HOST_ADDRESSES)
    assert candidate_addresses(alice.signals) == {"127.0.0.1"}


def candidate_addresses(signals: list[dict[str, Any]]) -> set[str]:
    """The addresses of the ICE candidates in signals (SDP and trickled)."""
    lines = [s["data"].get("candidate") or "" for s in signals if s["type"] == "ice"]
    for s in signals:
        lines += (s["data"].get("sdp") or "").splitlines()
    return {line.split()[4] for line in lines if line.removeprefix("a=").startswith("candidate:")}


# --- failures ------------------------------------------------------------------------------------


def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FAST_FAIL = {"max_retries": 0, "request_timeout": 2.0}


def failing_request(case: str, meeting: Meeting, receiver: WebhookReceiver) -> dict[str, Any]:
    """A request whose bot fails with the reason `case` names (before the first colon)."""
    server = meeting.server
    body = bot_request(meeting, receiver, settings=FAST_FAIL)
    if case == "auth:bad-token":
        body["token"] = "not-a-token-the-backend-signed-0123456789"
    elif case == "auth:no-user":
        body["token"] = server.token_without_user("nobody")
    elif case == "meeting_not_found:malformed":
        body["meeting_id"] = "no-such-meeting"
    elif case == "meeting_not_found:other-table":
        body["meeting_id"] = make_id("users")  # an id, of a user
    elif case == "not_a_participant:no-meeting":
        # a well-formed id of no meeting: the backend answers as for any meeting of others
        # (FORBIDDEN, not telling which meetings exist)
        body["meeting_id"] = make_id("meetings")
    elif case == "meeting_not_active:scheduled":
        body["meeting_id"] = server.meeting("bot", ["alice"], state="scheduled")
    elif case == "meeting_not_active:ended":
        server.end_meeting(meeting.id, "bot")
    elif case == "not_a_participant":
        body["token"] = server.token("mallory")
    elif case == "backend_unreachable":
        body["url"] = f"http://127.0.0.1:{closed_port()}"
    elif case == "internal":
        body["media"] = {"audio": "/nonexistent/speech.wav"}  # the worker cannot open it
    else:
        raise AssertionError(case)
    return body


@pytest.mark.parametrize(
    "case",
    [
        "auth:bad-token",
        "auth:no-user",
        "meeting_not_found:malformed",
        "meeting_not_found:other-table",
        "meeting_not_active:scheduled",
        "meeting_not_active:ended",
        "not_a_participant",
        "not_a_participant:no-meeting",
        "backend_unreachable",
        "internal",
    ],
)
async def test_a_bot_that_cannot_join_fails_with_the_reason(
    case: str,
    service: ServiceProcess,
    client: Client,
    meeting: Meeting,
    receiver: WebhookReceiver,
) -> None:
    body = await asyncio.to_thread(failing_request, case, meeting, receiver)
    token = body["token"]
    response = await client.create(body)
    assert response.status_code == 201, response.text
    bot_id = response.json()["id"]
    final = await client.wait_state(bot_id, "ended", "failed")
    reason = case.split(":")[0]
    assert (final["state"], final["reason"]) == ("failed", reason), final
    assert history(final) == ["queued", "joining", "failed"], final["history"]
    assert final["history"][-1]["reason"] == reason
    assert final["last_error"], final
    assert not final["media_connected"] and final["participants"] == []
    await receiver.wait_for(lambda: len(state_hooks(receiver, bot_id)) == 3)
    hooks = state_hooks(receiver, bot_id)
    assert [h["data"]["state"] for h in hooks] == ["queued", "joining", "failed"]
    assert hooks[-1]["data"]["reason"] == reason and hooks[-1]["data"]["previous"] == "joining"
    # the token is in no answer, no webhook and no error
    listed = await client.http.get("/v1/bots", params={"state": "failed"})
    assert bot_id in {b["id"] for b in listed.json()["bots"]}
    texts = [
        response.text,
        json.dumps(final),
        listed.text,
        *(d.body.decode() for d in receiver.deliveries),
    ]
    assert not [t for t in texts if token in t or SECRET in t]
    assert receiver.bad_signatures == 0


# --- recordings ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One second of a 440 Hz tone (a WAV file)."""
    path = tmp_path_factory.mktemp("tone") / "tone.wav"
    rate = 48_000
    t = np.arange(rate) / rate
    samples = (np.sin(2 * np.pi * 440 * t) * 0.3 * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


async def test_a_recorder_bot_hands_over_its_files(
    service: ServiceProcess,
    client: Client,
    meeting: Meeting,
    receiver: WebhookReceiver,
    tone: Path,
) -> None:
    response = await client.create(bot_request(meeting, receiver, role="recorder"))
    assert response.status_code == 201, response.text
    bot_id = response.json()["id"]
    await client.wait_state(bot_id, "in_meeting")
    early = await client.http.get(f"/v1/bots/{bot_id}/recordings")
    assert early.status_code == 404, early.text  # the manifest comes with recording.ready
    async with meeting.peer("alice", audio_file=str(tone), video=False) as alice:
        async with asyncio.timeout(TIMEOUT):
            await alice.offer(meeting.users["bot"])
            await alice.connected.wait()
            await track_ended(alice.pc.getSenders()[0].track)  # the second of tone played
        deleted = await client.http.delete(f"/v1/bots/{bot_id}")
        assert deleted.status_code == 202, deleted.text
        final = await client.wait_state(bot_id, "ended", "failed")
    assert (final["state"], final["reason"]) == ("ended", "requested"), final
    await receiver.wait_for(lambda: bool(receiver.events("recording.ready")))
    [ready] = receiver.events("recording.ready")
    files = ready["data"]["files"]
    assert [(f["user_id"], f["kind"]) for f in files] == [(meeting.users["alice"], "audio")]
    assert 0.7 <= files[0]["duration_s"] <= 1.6, files
    # the webhook comes before the bot's final state
    kinds = [(e["type"], e["data"].get("state")) for e in receiver.events()]
    assert kinds.index(("recording.ready", None)) < kinds.index(("bot.state_changed", "ended"))
    assert final["files"] == [{**f, "error": None} for f in files]

    manifest = await client.http.get(f"/v1/bots/{bot_id}/recordings")
    assert manifest.status_code == 200, manifest.text
    data = manifest.json()
    assert data["meetingId"] == meeting.id and data["endedAt"] is not None
    [participant] = data["participants"]
    assert participant["userId"] == meeting.users["alice"]
    listed = [f["path"] for s in participant["sessions"] for f in s["files"]]
    assert listed == [f["path"] for f in files]  # the manifest's paths are the download paths

    download = await client.http.get(f"/v1/bots/{bot_id}/recordings/{files[0]['path']}")
    assert download.status_code == 200, download.text
    assert len(download.content) > 2000  # a second of tone, not of silence
    recorded = service.state_dir / "bots" / bot_id
    [on_disk] = [p for p in recorded.rglob("*") if p.name == Path(files[0]["path"]).name]
    assert download.content == on_disk.read_bytes()

    # nothing outside the bot's own files, however the path is spelt
    base = f"{service.url}/v1/bots/{bot_id}/recordings/"
    # the recording's directory is <state dir>/bots/<id>/recording/<meeting>/
    assert (service.state_dir / "service.sqlite").is_file()
    for path in [
        "../../../../service.sqlite",
        "%2E%2E/%2E%2E/%2E%2E/%2E%2E/service.sqlite",
        "..%2F..%2F..%2F..%2Fservice.sqlite",
        f"{files[0]['path']}/../../manifest.json",
        "manifest.json",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
    ]:
        answer = await client.http.send(client.http.build_request("GET", base + path))
        assert answer.status_code == 404, (path, answer.status_code, answer.text[:200])
        assert b"SQLite" not in answer.content and b"root:" not in answer.content
    missing = await client.http.get("/v1/bots/bot_nobody/recordings")
    assert missing.status_code == 404


# --- transcripts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_sentences(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return synthesise(
        tmp_path_factory.mktemp("speech"),
        ["good morning everyone.", "the weather is nice today."],
        lead=0.5,
        pause=1.0,
    )


VTT_CUE = re.compile(r"^\d\d:\d\d:\d\d\.\d\d\d --> \d\d:\d\d:\d\d\.\d\d\d$")


async def test_a_transcriber_bot_posts_chunks_as_they_come(
    service: ServiceProcess,
    client: Client,
    meeting: Meeting,
    receiver: WebhookReceiver,
    two_sentences: Speech,
) -> None:
    body = bot_request(meeting, receiver, role="transcriber")
    response = await client.create(body)
    assert response.status_code == 201, response.text
    bot_id = response.json()["id"]
    await client.wait_state(bot_id, "in_meeting", within=TIMEOUT)
    alice = meeting.peer("alice", audio_file=str(two_sentences.path), video=False)
    async with alice, asyncio.timeout(2 * TIMEOUT):
        await alice.offer(meeting.users["bot"])
        await alice.connected.wait()
        played = asyncio.create_task(track_ended(alice.pc.getSenders()[0].track))
        # the first chunk arrives while the second sentence is still to come
        await receiver.wait_for(lambda: bool(receiver.events("transcript.chunk")))
        first_seen = played.done()
        await played
        await receiver.wait_for(lambda: len(receiver.events("transcript.chunk")) == 2)
        during = await client.bot(bot_id)
    assert not first_seen, "the first chunk came only after all the speech played"
    assert during["state"] == "in_meeting", during
    chunks = [e["data"] for e in receiver.events("transcript.chunk")]
    assert [c["speaker_id"] for c in chunks] == [meeting.users["alice"]] * 2
    assert [c["sequence"] for c in chunks] == sorted(c["sequence"] for c in chunks)
    assert all(c["text"].strip() and c["bot_id"] == bot_id for c in chunks)
    assert during["transcript"] == {"chunks": 2, "speakers": 1}

    deleted = await client.http.delete(f"/v1/bots/{bot_id}")
    assert deleted.status_code == 202
    final = await client.wait_state(bot_id, "ended", "failed")
    assert final["reason"] == "requested", final

    answer = await client.http.get(f"/v1/bots/{bot_id}/transcript")
    assert answer.status_code == 200, answer.text
    transcript = answer.json()
    assert transcript["bot_id"] == bot_id and transcript["meeting_id"] == meeting.id
    entries = transcript["entries"]
    assert [(e["text"], e["start_ms"], e["end_ms"]) for e in entries] == [
        (c["text"], c["start_ms"], c["end_ms"]) for c in chunks
    ]
    assert entries[0]["start_ms"] < entries[0]["end_ms"] <= entries[1]["start_ms"]

    vtt = await client.http.get(f"/v1/bots/{bot_id}/transcript", params={"format": "vtt"})
    assert vtt.status_code == 200 and vtt.headers["content-type"].startswith("text/vtt")
    lines = vtt.text.splitlines()
    assert lines[0] == "WEBVTT"
    cues = [line for line in lines if "-->" in line]
    assert len(cues) == 2 and all(VTT_CUE.match(c) for c in cues), vtt.text
    assert cues[0].startswith("00:00:00.000 --> ")
    for entry in entries:
        assert entry["text"] in vtt.text
    accepted = await client.http.get(
        f"/v1/bots/{bot_id}/transcript", headers={"Accept": "text/vtt"}
    )
    assert accepted.text == vtt.text
    bad = await client.http.get(f"/v1/bots/{bot_id}/transcript", params={"format": "srt"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "format"


# --- metrics -------------------------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition (None if absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if wanted else "")
    match = re.search(rf"^{pattern} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


async def test_metrics_count_bots_joins_and_failures(
    service_factory: Any, meeting: Meeting, receiver: WebhookReceiver
) -> None:
    own = service_factory("--workers", "2")  # counts of this test's bots only
    client = Client(own.url)
    try:
        bad = bot_request(meeting, receiver, meeting_id="no-such-meeting", settings=FAST_FAIL)
        failing = (await client.create(bad)).json()["id"]
        joining = (await client.create(bot_request(meeting, receiver))).json()["id"]
        await client.wait_state(failing, "failed")
        await client.wait_state(joining, "in_meeting")
        async with httpx.AsyncClient() as anonymous:  # no key needed
            scraped = await anonymous.get(f"{own.url}/metrics")
        assert scraped.status_code == 200
        text = scraped.text
        assert metric(text, "connvo_service_bots", state="in_meeting") == 1
        assert metric(text, "connvo_service_bots", state="failed") == 1
        assert metric(text, "connvo_service_bots", state="ended") == 0
        assert metric(text, "connvo_service_joins_total") == 1
        assert metric(text, "connvo_service_failures_total", reason="meeting_not_found") == 1
        loads = re.findall(r'^connvo_service_worker_bots\{worker="[^"]+"\} (\S+)$', text, re.M)
        assert sorted(float(v) for v in loads)[-1:] == [1.0] and sum(map(float, loads)) == 1
        assert metric(text, "connvo_service_webhook_deliveries_total", outcome="delivered")

        assert (await client.http.delete(f"/v1/bots/{joining}")).status_code == 202
        await client.wait_state(joining, "ended")
        text = (await client.http.get("/metrics")).text
        assert metric(text, "connvo_service_bots", state="ended") == 1
        assert metric(text, "connvo_service_bots", state="in_meeting") == 0
        assert metric(text, "connvo_service_ended_total", reason="requested") == 1
    finally:
        await client.aclose()
