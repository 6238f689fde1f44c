"""Every served function over HTTP: results, access rules and error paths (generation 2)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from agent.devserver.functions.transcripts import RATE_LIMIT_CHUNKS, RATE_LIMIT_WINDOW_MS
from agent.devserver.process import DevServerProcess
from agent.signaling import models
from tests.conftest import DevServerFactory
from tests.support.devserver import LIFE, SIG, Api, MeetingSetup, setup_meeting, unique

QUERIES = "meetings/queries/"
INGEST = "transcripts/ingestion/ingestTranscriptChunk"


@pytest.fixture
def meeting(server2: DevServerProcess, http: httpx.Client) -> tuple[MeetingSetup, list[str]]:
    return setup_meeting(server2, "host", "guest", client=http)


def _outsider(server: DevServerProcess, http: httpx.Client) -> Api:
    return Api(server.url, server.token(unique("outsider")), http)


# --- lifecycle -----------------------------------------------------------------------------------


def test_create_meeting_flow(server2: DevServerProcess, http: httpx.Client) -> None:
    host_name, guest_name = unique("host"), unique("guest")
    host = Api(server2.url, server2.token(host_name), http)
    guest = Api(server2.url, server2.token(guest_name), http)
    guest_id = server2.user_id(guest_name)

    created = host.ok(
        LIFE + "createMeeting",
        title="Planning",
        recordingEnabled=False,
        transcriptionEnabled=True,
        maxParticipants=8,
    )
    models.CreateMeetingResult.model_validate(created)
    assert created["features"] == {"recording": False, "transcription": True, "maxParticipants": 8}
    meeting_id = created["meetingId"]

    meeting = models.Meeting.model_validate(host.ok(QUERIES + "getMeeting", meetingId=meeting_id))
    assert (meeting.state, meeting.userRole, meeting.participantCount) == ("scheduled", "host", 1)

    # Not active yet: no sessions, no joining.
    host.error(LIFE + "joinMeeting", code="MEETING_NOT_ACTIVE", meetingId=meeting_id)
    host.error(
        SIG + "createWebRTCSession", code="MEETING_NOT_ACTIVE", meetingId=meeting_id, sessionId="a"
    )

    added = host.ok(
        LIFE + "addParticipant", meetingId=meeting_id, userId=guest_id, role="participant"
    )
    models.AddParticipantResult.model_validate(added)
    host.error(
        LIFE + "addParticipant", code="BAD_ARGS", meetingId=meeting_id, userId=guest_id,
        role="participant",
    )  # fmt: skip
    guest.error(LIFE + "startMeeting", code="FORBIDDEN", meetingId=meeting_id)
    started = host.ok(LIFE + "startMeeting", meetingId=meeting_id)
    models.StartMeetingResult.model_validate(started)
    assert host.ok(QUERIES + "getMeeting", meetingId=meeting_id)["state"] == "active"

    joined = guest.ok(LIFE + "joinMeeting", meetingId=meeting_id)
    assert joined == {"success": True, "webrtcReady": True}
    guest_view = models.Meeting.model_validate(
        guest.ok(QUERIES + "getMeeting", meetingId=meeting_id)
    )
    assert (guest_view.userRole, guest_view.userPresence) == ("participant", "joined")

    guest.error(LIFE + "endMeeting", code="FORBIDDEN", meetingId=meeting_id)
    ended = models.EndMeetingResult.model_validate(
        host.ok(LIFE + "endMeeting", meetingId=meeting_id)
    )
    assert ended.success and ended.duration is not None and ended.duration >= 0
    host.error(LIFE + "endMeeting", code="MEETING_NOT_ACTIVE", meetingId=meeting_id)
    host.error(LIFE + "startMeeting", code="MEETING_NOT_ACTIVE", meetingId=meeting_id)
    guest.error(LIFE + "joinMeeting", code="MEETING_NOT_ACTIVE", meetingId=meeting_id)
    guest.error(LIFE + "getMeetingConnectionInfo", code="MEETING_NOT_ACTIVE", meetingId=meeting_id)
    host.error(
        LIFE + "addParticipant", code="MEETING_NOT_ACTIVE", meetingId=meeting_id,
        userId=server2.user_id(unique("late")), role="participant",
    )  # fmt: skip


def test_create_meeting_invites_known_emails(server2: DevServerProcess, http: httpx.Client) -> None:
    host_name, guest_name = unique("host"), unique("guest")
    host = Api(server2.url, server2.token(host_name), http)
    server2.user_id(guest_name)
    created = host.ok(
        LIFE + "createMeeting",
        title="t",
        participantEmails=[f"{guest_name}@example.com", "nobody-here@example.com"],
    )
    people = host.ok(QUERIES + "listMeetingParticipants", meetingId=created["meetingId"])
    assert sorted(p["user"]["displayName"] for p in people) == sorted([host_name, guest_name])


def test_create_meeting_for_someone_else_is_forbidden(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    api = _outsider(server2, http)
    other = server2.user_id(unique("other"))
    api.error(LIFE + "createMeeting", code="FORBIDDEN", title="t", organizerId=other)


def test_add_unknown_user_is_not_found(
    server2: DevServerProcess, http: httpx.Client, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (host, _guest) = meeting
    # a syntactically valid users ID that names nobody in this database
    ghost = DevServerProcess()
    try:
        ghost_id = ghost.user_id(unique("ghost"))
    finally:
        ghost.close()
    m.api(host).error(
        LIFE + "addParticipant", code="NOT_FOUND", meetingId=m.id, userId=ghost_id,
        role="participant",
    )  # fmt: skip


def test_start_active_meeting_is_idempotent(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, _guest) = meeting
    assert m.api(host).ok(LIFE + "startMeeting", meetingId=m.id)["success"] is True


def test_connection_info(
    server2: DevServerProcess, http: httpx.Client, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (_host, guest) = meeting
    info = models.MeetingConnectionInfo.model_validate(
        m.api(guest).ok(LIFE + "getMeetingConnectionInfo", meetingId=m.id)
    )
    assert info.videoProvider == "webrtc"
    assert info.connectionInfo.iceServers == []  # none unless --ice-server is given
    _outsider(server2, http).error(
        LIFE + "getMeetingConnectionInfo", code="FORBIDDEN", meetingId=m.id
    )


def test_connection_info_lists_configured_ice_servers(
    devserver_factory: DevServerFactory,
) -> None:
    server = devserver_factory(ice_servers=["stun:stun.example.org:3478", "turn:turn.example.org"])
    m, (host,) = setup_meeting(server, "host")
    info = m.api(host).ok(LIFE + "getMeetingConnectionInfo", meetingId=m.id)
    assert info["connectionInfo"]["iceServers"] == [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": "turn:turn.example.org"},
    ]
    started = m.api(host).ok(LIFE + "startMeeting", meetingId=m.id)
    assert started["roomInfo"]["iceServers"] == info["connectionInfo"]["iceServers"]


def test_leave_meeting_marks_presence_and_closes_sessions(
    meeting: tuple[MeetingSetup, list[str]],
) -> None:
    m, (host, guest) = meeting
    g = m.api(guest)
    g.ok(LIFE + "joinMeeting", meetingId=m.id)
    g.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="g1")
    m.api(host).ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="h1")
    assert g.ok(LIFE + "leaveMeeting", meetingId=m.id) == {"success": True}
    people = {p["userId"]: p for p in g.ok(QUERIES + "listMeetingParticipants", meetingId=m.id)}
    assert people[m.users[guest]]["presence"] == "left"
    assert "leftAt" in people[m.users[guest]]
    sessions = g.ok(SIG + "getActiveSessions", meetingId=m.id)
    assert [s["sessionId"] for s in sessions] == ["h1"]
    # They can come back while the meeting is active.
    g.ok(LIFE + "joinMeeting", meetingId=m.id)


def test_outsiders_are_refused_everywhere(
    server2: DevServerProcess, http: httpx.Client, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, _ = meeting
    api = _outsider(server2, http)
    calls: dict[str, dict[str, Any]] = {
        QUERIES + "getMeeting": {},
        QUERIES + "listMeetingParticipants": {},
        LIFE + "joinMeeting": {},
        LIFE + "leaveMeeting": {},
        LIFE + "startMeeting": {},
        LIFE + "endMeeting": {},
        LIFE + "addParticipant": {"userId": server2.user_id(unique("x")), "role": "participant"},
        SIG + "createWebRTCSession": {"sessionId": "o1"},
        SIG + "exchangeSessionDescription": {
            "sessionId": "o1", "description": {"type": "offer", "sdp": "v=0"}
        },
        SIG + "exchangeICECandidate": {"sessionId": "o1", "candidate": {"candidate": ""}},
        SIG + "getPendingSignals": {},
        SIG + "updateSessionState": {"sessionId": "o1", "state": "connected"},
        SIG + "getActiveSessions": {},
        SIG + "closeSession": {"sessionId": "o1"},
        INGEST: {"text": "hi", "confidence": 0.5, "startTime": 0, "endTime": 1},
    }  # fmt: skip
    for function, extra in calls.items():
        body = api.error(function, code="FORBIDDEN", meetingId=m.id, **extra)
        assert "participant" in body["errorMessage"], function


# --- queries -------------------------------------------------------------------------------------


def test_get_current_user(server2: DevServerProcess, http: httpx.Client) -> None:
    name = unique("me")
    user = models.CurrentUser.model_validate(
        Api(server2.url, server2.token(name), http).ok("users/queries/getCurrentUser")
    )
    assert (user.id, user.displayName, user.email) == (
        server2.user_id(name), name, f"{name}@example.com"
    )  # fmt: skip
    assert user.isActive


def test_list_participants_reports_sessions(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    h = m.api(host)
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="h1")
    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="h1", state="connected")
    rows = [
        models.MeetingParticipant.model_validate(p)
        for p in h.ok(QUERIES + "listMeetingParticipants", meetingId=m.id)
    ]
    by_user = {p.userId: p for p in rows}
    assert by_user[m.users[host]].role == "host"
    assert by_user[m.users[host]].webrtcConnected and by_user[m.users[host]].webrtcSessionCount == 1
    assert by_user[m.users[guest]].role == "participant"
    assert not by_user[m.users[guest]].webrtcConnected
    assert by_user[m.users[guest]].user.displayName == guest
    meeting_doc = h.ok(QUERIES + "getMeeting", meetingId=m.id)
    assert meeting_doc["activeWebRTCSessions"] == 1 and meeting_doc["participantCount"] == 2


# --- sessions ------------------------------------------------------------------------------------


def test_sessions_lifecycle(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    first = h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="laptop")
    assert first == {"sessionId": "laptop", "success": True}
    assert h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="laptop") == first
    # the same session id in the same meeting belongs to its creator
    g.error(SIG + "createWebRTCSession", code="FORBIDDEN", meetingId=m.id, sessionId="laptop")

    sessions = [
        models.ActiveSession.model_validate(s)
        for s in g.ok(SIG + "getActiveSessions", meetingId=m.id)
    ]
    assert len(sessions) == 1
    assert (sessions[0].sessionId, sessions[0].state) == ("laptop", "connecting")
    assert sessions[0].user.id == m.users[host] and sessions[0].user.displayName == host

    h.ok(
        SIG + "updateSessionState", meetingId=m.id, sessionId="laptop", state="connected",
        metadata={"agent": "bot", "tracks": 2, "ratio": 0.5, "muted": False},
    )  # fmt: skip
    (s,) = g.ok(SIG + "getActiveSessions", meetingId=m.id)
    assert s["state"] == "connected"
    assert s["metadata"] == {"agent": "bot", "tracks": 2, "ratio": 0.5, "muted": False}

    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="laptop", state="disconnected")
    assert len(g.ok(SIG + "getActiveSessions", meetingId=m.id)) == 1  # disconnected is listed
    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="laptop", state="failed")
    assert g.ok(SIG + "getActiveSessions", meetingId=m.id) == []
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="laptop")  # reconnect revives
    assert len(g.ok(SIG + "getActiveSessions", meetingId=m.id)) == 1
    assert h.ok(SIG + "closeSession", meetingId=m.id, sessionId="laptop") is None
    assert g.ok(SIG + "getActiveSessions", meetingId=m.id) == []


@pytest.mark.parametrize("metadata", [{"nested": {"a": 1}}, {"list": [1, 2]}, {"none": None}])
def test_metadata_values_must_be_scalars(
    meeting: tuple[MeetingSetup, list[str]], metadata: dict[str, Any]
) -> None:
    m, (host, _guest) = meeting
    h = m.api(host)
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="s")
    body = h.error(
        SIG + "updateSessionState", code="BAD_ARGS", meetingId=m.id, sessionId="s",
        state="connected", metadata=metadata,
    )  # fmt: skip
    assert "Path: .metadata." in body["errorMessage"]


def test_update_or_close_unknown_or_foreign_session(
    meeting: tuple[MeetingSetup, list[str]],
) -> None:
    m, (host, guest) = meeting
    m.api(host).ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="hosts")
    g = m.api(guest)
    for sid in ("hosts", "missing"):
        body = g.error(
            SIG + "updateSessionState", code="NOT_FOUND", meetingId=m.id, sessionId=sid,
            state="connected",
        )  # fmt: skip
        assert body["errorMessage"] == "WebRTC session not found"
        g.error(SIG + "closeSession", code="NOT_FOUND", meetingId=m.id, sessionId=sid)


def test_exchange_trusts_no_session_id_but_names_the_real_sender(
    server2: DevServerProcess, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    offer = {"type": "offer", "sdp": "v=0"}
    g.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="guest-session")
    # a session nobody created, and the guest's own session id used by the host (a forgery)
    for sid in ("never-created", "guest-session"):
        assert h.ok(
            SIG + "exchangeSessionDescription", meetingId=m.id, sessionId=sid,
            description=offer, targetUserId=m.users[guest],
        ) is None  # fmt: skip
    page = g.ok(SIG + "getPendingSignals", meetingId=m.id)
    assert sorted(s["sessionId"] for s in page) == ["guest-session", "never-created"]
    assert {s["fromUserId"] for s in page} == {m.users[host]}  # the real sender, always
    stranger = server2.user_id(unique("stranger"))
    body = h.error(
        SIG + "exchangeICECandidate", code="NOT_FOUND", meetingId=m.id, sessionId="h",
        candidate={"candidate": ""}, targetUserId=stranger,
    )  # fmt: skip
    assert "participant" in body["errorMessage"]


def test_signal_round_trip(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="h")
    g.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="g")
    h.ok(
        SIG + "exchangeSessionDescription", meetingId=m.id, sessionId="h",
        description={"type": "offer", "sdp": "v=0 offer"}, targetUserId=m.users[guest],
    )  # fmt: skip
    h.ok(
        SIG + "exchangeICECandidate", meetingId=m.id, sessionId="h",
        candidate={"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMLineIndex": 0,
                   "sdpMid": "0"},
        targetUserId=m.users[guest],
    )  # fmt: skip
    h.ok(
        SIG + "exchangeICECandidate", meetingId=m.id, sessionId="h",
        candidate={"candidate": ""}, targetUserId=m.users[guest],
    )  # fmt: skip
    page = [
        models.Signal.model_validate(s) for s in g.ok(SIG + "getPendingSignals", meetingId=m.id)
    ]
    assert len(page) == 3
    assert all(s.sessionId == "h" and s.fromUserId == m.users[host] for s in page)
    kinds = sorted((s.type, s.data.model_dump(exclude_none=True).get("sdp", "")) for s in page)
    assert kinds[-1] == ("sdp", "v=0 offer")
    end = [s for s in page if s.type == "ice" and s.candidate.candidate == ""]
    assert len(end) == 1 and end[0].candidate.sdpMid is None  # absent fields stay absent
    assert all(isinstance(s.timestamp, float) for s in page)
    # the sender does not receive its own direct signals
    assert h.ok(SIG + "getPendingSignals", meetingId=m.id) == []
    assert g.ok(SIG + "markSignalsProcessed", signalIds=[s.id for s in page]) is None
    assert g.ok(SIG + "getPendingSignals", meetingId=m.id) == []


# --- transcripts ---------------------------------------------------------------------------------


def _chunk(meeting_id: str, text: str = "hello") -> dict[str, Any]:
    return {
        "meetingId": meeting_id, "text": text, "confidence": 0.9, "startTime": 1000,
        "endTime": 2000, "speakerId": "spk", "language": "en", "isInterim": False,
    }  # fmt: skip


def test_transcript_sequence_and_rate_limit(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    first = models.IngestTranscriptChunkResult.model_validate(h.ok(INGEST, **_chunk(m.id)))
    assert first.sequence == 1 and first.success
    assert first.bucketMs % RATE_LIMIT_WINDOW_MS == 0
    # the sequence is per meeting, across speakers
    assert g.ok(INGEST, **_chunk(m.id))["sequence"] == 2
    remaining = [first.rateLimitRemaining]
    bucket = first.bucketMs
    while True:
        r = h.call(INGEST, _chunk(m.id))
        if r.status_code != 200:
            break
        value = r.json()["value"]
        if value["bucketMs"] != bucket:  # crossed into the next window: start counting again
            bucket, remaining = value["bucketMs"], []
        remaining.append(value["rateLimitRemaining"])
        assert len(remaining) <= RATE_LIMIT_CHUNKS
    assert r.status_code == 400
    body = r.json()
    assert body["errorData"]["code"] == "RATE_LIMITED"
    assert 0 < body["errorData"]["retryAfterMs"] <= RATE_LIMIT_WINDOW_MS
    assert remaining[-1] == 0
    assert remaining == sorted(remaining, reverse=True)
    # the limit is per user: the guest is not limited
    assert g.ok(INGEST, **_chunk(m.id))["sequence"] > 2


def test_transcript_argument_errors(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, _guest) = meeting
    h = m.api(host)
    h.error(INGEST, code="BAD_ARGS", **{**_chunk(m.id), "confidence": 1.5})
    h.error(INGEST, code="BAD_ARGS", **{**_chunk(m.id), "startTime": 5, "endTime": 1})
    h.error(
        INGEST, code="BAD_ARGS", **{**_chunk(m.id), "text": "x" * (models.MAX_TRANSCRIPT_CHARS + 1)}
    )
