"""Every served function over HTTP, against what Connvo's functions do: results, access rules,
error codes and messages (generation 2, function errors answered 200)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent.devserver.functions.transcripts import RATE_LIMIT_CHUNKS, RATE_LIMIT_WINDOW_MS
from agent.devserver.process import DevServerProcess
from agent.signaling import models
from tests.conftest import DevServerFactory
from tests.support.devserver import (
    GET_USER,
    INGEST,
    LIFE,
    QUERIES,
    SIG,
    Api,
    MeetingSetup,
    setup_meeting,
    unique,
)

NOT_ACTIVE = "Cannot create WebRTC session for inactive meeting"


@pytest.fixture
def meeting(server2: DevServerProcess, http: httpx.Client) -> tuple[MeetingSetup, list[str]]:
    return setup_meeting(server2, "host", "guest", client=http)


def _outsider(server: DevServerProcess, http: httpx.Client) -> Api:
    return Api(server.url, server.token(unique("outsider")), http)


def _message(body: dict[str, Any]) -> str:
    return str(body["errorData"]["message"])


def _state(api: Api, meeting_id: str) -> str:
    return str(api.ok(QUERIES + "getMeeting", meetingId=meeting_id)["state"])


# --- lifecycle -----------------------------------------------------------------------------------


def test_create_meeting_makes_a_scheduled_free_tier_meeting(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    host_name, guest_name = unique("host"), unique("guest")
    host = Api(server2.url, server2.token(host_name), http)
    server2.user_id(guest_name)
    created = host.ok(
        LIFE + "createMeeting",
        title="  Planning  ",
        recordingEnabled=True,
        transcriptionEnabled=False,
        maxParticipants=8,
        participantEmails=[f"{guest_name}@example.com"],
    )
    models.CreateMeetingResult.model_validate(created)
    # Connvo's free tier: WebRTC, no recording, always transcription, at most 4 participants.
    assert created["features"] == {"recording": False, "transcription": True, "maxParticipants": 4}
    assert (created["webrtcReady"], created["videoProvider"]) == (True, "webrtc")
    meeting = models.Meeting.model_validate(
        host.ok(QUERIES + "getMeeting", meetingId=created["meetingId"])
    )
    assert (meeting.state, meeting.userRole, meeting.userPresence) == (
        "scheduled",
        "host",
        "invited",
    )
    assert meeting.title == "Planning" and meeting.duration == 1_800_000
    # participantEmails is accepted and ignored
    people = host.ok(QUERIES + "listMeetingParticipants", meetingId=created["meetingId"])
    assert [p["user"]["displayName"] for p in people] == [host_name]
    small = host.ok(LIFE + "createMeeting", title="t", maxParticipants=2)
    assert small["features"]["maxParticipants"] == 2
    assert host.ok(LIFE + "createMeeting", title="t")["features"]["maxParticipants"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"title": " \t"}, "Meeting title cannot be empty"),
        ({"title": "t", "scheduledAt": 1000.0}, "Cannot schedule meeting in the past"),
        ({"title": "t", "maxParticipants": -1}, "Maximum participants must be at least 1"),
    ],
)
def test_create_meeting_checks(
    server2: DevServerProcess, http: httpx.Client, args: dict[str, Any], message: str
) -> None:
    api = _outsider(server2, http)
    assert _message(api.error(LIFE + "createMeeting", code="VALIDATION_ERROR", **args)) == message


def test_create_meeting_organizer(server2: DevServerProcess, http: httpx.Client) -> None:
    me, other = unique("me"), unique("other")
    api = Api(server2.url, server2.token(me), http)
    other_id = server2.user_id(other)
    # signed in: organizerId is ignored, the caller hosts
    created = api.ok(LIFE + "createMeeting", title="t", organizerId=other_id)["meetingId"]
    assert api.ok(QUERIES + "getMeeting", meetingId=created)["organizerId"] == server2.user_id(me)
    # without a token, Connvo creates the meeting for organizerId, whoever asks
    anonymous = Api(server2.url, None, http)
    created = anonymous.ok(LIFE + "createMeeting", title="t", organizerId=other_id)["meetingId"]
    as_other = Api(server2.url, server2.token(other), http)
    assert as_other.ok(QUERIES + "getMeeting", meetingId=created)["userRole"] == "host"
    ghost = DevServerProcess()
    try:
        ghost_id = ghost.user_id(unique("ghost"))  # a users ID that names nobody here
    finally:
        ghost.close()
    body = anonymous.error(
        LIFE + "createMeeting", code="NOT_FOUND", title="t", organizerId=ghost_id
    )
    assert _message(body) == f"User with ID {ghost_id} not found"


def test_meeting_lifecycle(server2: DevServerProcess, http: httpx.Client) -> None:
    m, (host, guest) = setup_meeting(server2, "host", "guest", client=http, state="scheduled")
    h, g = m.api(host), m.api(guest)
    late = unique("late")
    late_id = server2.user_id(late)
    # scheduled: nothing that needs an active meeting works
    for function, extra, code, message in [
        (LIFE + "joinMeeting", {}, "VALIDATION_ERROR", "Cannot join inactive meeting"),
        (SIG + "createWebRTCSession", {"sessionId": "a"}, "VALIDATION_ERROR", NOT_ACTIVE),
        (LIFE + "getMeetingConnectionInfo", {}, "VALIDATION_ERROR", "Meeting is not active"),
        (LIFE + "endMeeting", {}, "VALIDATION_ERROR", "Can only end active meetings"),
    ]:
        assert _message(h.error(function, code=code, meetingId=m.id, **extra)) == message
    body = h.error(INGEST, code="MEETING_NOT_ACTIVE", **_chunk(m.id))
    assert body["errorData"]["metadata"] == {"meetingId": m.id}

    # host-only: a participant is refused with INSUFFICIENT_PERMISSIONS
    body = g.error(LIFE + "startMeeting", code="INSUFFICIENT_PERMISSIONS", meetingId=m.id)
    assert body["errorData"]["statusCode"] == 403 and _message(body) == "Requires host role"
    g.error(
        LIFE + "addParticipant", code="INSUFFICIENT_PERMISSIONS", meetingId=m.id, userId=late_id,
        role="participant",
    )  # fmt: skip
    added = h.ok(LIFE + "addParticipant", meetingId=m.id, userId=late_id, role="co-host")
    models.AddParticipantResult.model_validate(added)
    late_api = Api(server2.url, server2.token(late), http)
    assert late_api.ok(QUERIES + "getMeeting", meetingId=m.id)["userRole"] == "participant"
    body = h.error(
        LIFE + "addParticipant", code="VALIDATION_ERROR", meetingId=m.id, userId=late_id,
        role="participant",
    )  # fmt: skip
    assert _message(body) == "User is already a participant in this meeting"

    started = models.StartMeetingResult.model_validate(h.ok(LIFE + "startMeeting", meetingId=m.id))
    assert started.roomInfo is not None and started.roomInfo.roomId is None
    assert _state(g, m.id) == "active"
    body = h.error(LIFE + "startMeeting", code="VALIDATION_ERROR", meetingId=m.id)
    assert _message(body) == "Meeting is already active"
    assert g.ok(LIFE + "joinMeeting", meetingId=m.id) == {"success": True, "webrtcReady": True}
    view = models.Meeting.model_validate(g.ok(QUERIES + "getMeeting", meetingId=m.id))
    assert (view.userRole, view.userPresence, view.participantCount) == ("participant", "joined", 3)

    g.error(LIFE + "endMeeting", code="INSUFFICIENT_PERMISSIONS", meetingId=m.id)
    ended = models.EndMeetingResult.model_validate(h.ok(LIFE + "endMeeting", meetingId=m.id))
    assert ended.success and ended.duration is not None and ended.duration >= 0
    assert _state(g, m.id) == "concluded"
    for function, extra, message in [
        (LIFE + "endMeeting", {}, "Can only end active meetings"),
        (LIFE + "startMeeting", {}, "Cannot start a concluded or cancelled meeting"),
        (LIFE + "joinMeeting", {}, "Cannot join inactive meeting"),
        (LIFE + "getMeetingConnectionInfo", {}, "Meeting is not active"),
        (
            LIFE + "addParticipant",
            {"userId": server2.user_id(unique("later")), "role": "participant"},
            "Cannot add participants to concluded or cancelled meeting",
        ),
    ]:
        body = h.error(function, code="VALIDATION_ERROR", meetingId=m.id, **extra)
        assert _message(body) == message, function


def test_process_helpers_create_scheduled_and_end_meetings(
    server2: DevServerProcess, http: httpx.Client
) -> None:
    host, guest = unique("host"), unique("guest")
    meeting_id = server2.meeting(host, [guest], state="scheduled")
    api = Api(server2.url, server2.token(guest), http)
    assert _state(api, meeting_id) == "scheduled"
    assert server2.start_meeting(meeting_id, host)["success"] is True
    assert _state(api, meeting_id) == "active"
    assert server2.end_meeting(meeting_id, host)["success"] is True
    assert _state(api, meeting_id) == "concluded"
    assert _state(api, server2.meeting(host, [guest])) == "active"  # the default


def test_add_unknown_user_is_not_found(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, _guest) = meeting
    ghost = DevServerProcess()
    try:
        ghost_id = ghost.user_id(unique("ghost"))  # a users ID that names nobody here
    finally:
        ghost.close()
    body = m.api(host).error(
        LIFE + "addParticipant", code="NOT_FOUND", meetingId=m.id, userId=ghost_id,
        role="participant",
    )  # fmt: skip
    assert body["errorData"]["metadata"] == {"id": ghost_id}


def test_connection_info(
    server2: DevServerProcess, http: httpx.Client, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (_host, guest) = meeting
    info = models.MeetingConnectionInfo.model_validate(
        m.api(guest).ok(LIFE + "getMeetingConnectionInfo", meetingId=m.id)
    )
    assert info.videoProvider == "webrtc"
    assert info.connectionInfo.roomId == f"webrtc_{m.id}"
    assert info.connectionInfo.iceServers == []  # none unless --ice-server is given
    assert info.features.model_dump() == {
        "recording": False, "transcription": True, "maxParticipants": 4
    }  # fmt: skip
    _outsider(server2, http).error(
        LIFE + "getMeetingConnectionInfo", code="FORBIDDEN", meetingId=m.id
    )


def test_connection_info_lists_configured_ice_servers(
    devserver_factory: DevServerFactory,
) -> None:
    server = devserver_factory(ice_servers=["stun:stun.example.org:3478", "turn:turn.example.org"])
    m, (host,) = setup_meeting(server, "host", state="scheduled")
    started = m.api(host).ok(LIFE + "startMeeting", meetingId=m.id)
    info = m.api(host).ok(LIFE + "getMeetingConnectionInfo", meetingId=m.id)
    assert info["connectionInfo"]["iceServers"] == [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": "turn:turn.example.org"},
    ]
    assert started["roomInfo"] == {"iceServers": info["connectionInfo"]["iceServers"]}


def test_leave_meeting_changes_presence_only(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    g.ok(LIFE + "joinMeeting", meetingId=m.id)
    g.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="g1")
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="h1")
    assert g.ok(LIFE + "leaveMeeting", meetingId=m.id) == {"success": True}
    people = {p["userId"]: p for p in g.ok(QUERIES + "listMeetingParticipants", meetingId=m.id)}
    assert people[m.users[guest]]["presence"] == "left" and "leftAt" in people[m.users[guest]]
    # still a participant, sessions untouched, still signalling
    sessions = h.ok(SIG + "getActiveSessions", meetingId=m.id)
    assert sorted(s["sessionId"] for s in sessions) == ["g1", "h1"]
    g.ok(
        SIG + "exchangeICECandidate", meetingId=m.id, sessionId="g1", candidate={"candidate": ""},
        targetUserId=m.users[host],
    )  # fmt: skip
    assert len(h.ok(SIG + "getPendingSignals", meetingId=m.id)) == 1
    # rejoining sets joinedAt; leftAt stays as it was
    g.ok(LIFE + "joinMeeting", meetingId=m.id)
    again = next(
        p for p in g.ok(QUERIES + "listMeetingParticipants", meetingId=m.id)
        if p["userId"] == m.users[guest]
    )  # fmt: skip
    assert again["presence"] == "joined" and again["leftAt"] == people[m.users[guest]]["leftAt"]


def test_ended_meeting_keeps_sessions_and_signalling(
    server2: DevServerProcess, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="h")
    g.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="g")
    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="h", state="connected")
    server2.end_meeting(m.id, host)
    assert _state(g, m.id) == "concluded"  # the only place that shows it
    states = {s["sessionId"]: s["state"] for s in g.ok(SIG + "getActiveSessions", meetingId=m.id)}
    assert states == {"h": "connected", "g": "connecting"}
    h.ok(
        SIG + "exchangeSessionDescription", meetingId=m.id, sessionId="h",
        description={"type": "offer", "sdp": "v=0"}, targetUserId=m.users[guest],
    )  # fmt: skip
    (signal,) = g.ok(SIG + "getPendingSignals", meetingId=m.id)
    g.ok(SIG + "markSignalsProcessed", signalIds=[signal["_id"]])
    g.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="g", state="disconnected")
    g.ok(LIFE + "leaveMeeting", meetingId=m.id)
    body = g.error(SIG + "createWebRTCSession", code="VALIDATION_ERROR", meetingId=m.id,
                   sessionId="g2")  # fmt: skip
    assert _message(body) == NOT_ACTIVE


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
        LIFE + "getMeetingConnectionInfo": {},
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
        assert _message(body) == "Access denied: Not a meeting participant", function
        assert body["errorData"]["statusCode"] == 403
        assert body["errorData"]["metadata"]["meetingId"] == m.id


# --- queries -------------------------------------------------------------------------------------


def test_get_current_user(server2: DevServerProcess, http: httpx.Client) -> None:
    name = unique("me")
    user = models.CurrentUser.model_validate(
        Api(server2.url, server2.token(name), http).ok(GET_USER)
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
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="h0")
    h.ok(SIG + "closeSession", meetingId=m.id, sessionId="h0")
    rows = [
        models.MeetingParticipant.model_validate(p)
        for p in h.ok(QUERIES + "listMeetingParticipants", meetingId=m.id)
    ]
    by_user = {p.userId: p for p in rows}
    assert by_user[m.users[host]].role == "host"
    assert by_user[m.users[host]].webrtcConnected
    assert by_user[m.users[host]].webrtcSessionCount == 2  # every session, closed ones too
    assert by_user[m.users[guest]].role == "participant"
    assert not by_user[m.users[guest]].webrtcConnected
    assert by_user[m.users[guest]].user.displayName == guest
    meeting_doc = h.ok(QUERIES + "getMeeting", meetingId=m.id)
    assert meeting_doc["activeWebRTCSessions"] == 1 and meeting_doc["participantCount"] == 2


# --- sessions ------------------------------------------------------------------------------------


def test_create_session_is_idempotent_whoever_owns_it(
    meeting: tuple[MeetingSetup, list[str]],
) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    first = h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="laptop")
    assert first == {"sessionId": "laptop", "success": True}
    assert h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="laptop") == first
    # another user's session id: success, and the row stays the host's
    assert g.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="laptop") == first
    (s,) = g.ok(SIG + "getActiveSessions", meetingId=m.id)
    assert (s["sessionId"], s["userId"], s["state"]) == ("laptop", m.users[host], "connecting")
    # ... so the guest cannot update it
    g.error(SIG + "updateSessionState", code="NOT_FOUND", meetingId=m.id, sessionId="laptop",
            state="connected")  # fmt: skip
    # a closed session is not reopened
    h.ok(SIG + "closeSession", meetingId=m.id, sessionId="laptop")
    assert h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="laptop") == first
    assert g.ok(SIG + "getActiveSessions", meetingId=m.id) == []
    # nor a failed one
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="desk")
    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="desk", state="failed")
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="desk")
    assert g.ok(SIG + "getActiveSessions", meetingId=m.id) == []


def test_active_sessions(
    server2: DevServerProcess, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    for sid, state in [("a", "connected"), ("b", None), ("c", "disconnected"), ("d", "failed"),
                       ("e", "connected")]:  # fmt: skip
        h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId=sid)
        if state:
            h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId=sid, state=state)
    g.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="g")
    g.ok(LIFE + "leaveMeeting", meetingId=m.id)
    sessions = [
        models.ActiveSession.model_validate(s)
        for s in g.ok(SIG + "getActiveSessions", meetingId=m.id)
    ]
    # connecting first, then connected, then disconnected, each oldest first; the caller's own
    # session and those of users who left are listed; failed and closed ones are not
    assert [(s.sessionId, s.state) for s in sessions] == [
        ("b", "connecting"), ("g", "connecting"), ("a", "connected"), ("e", "connected"),
        ("c", "disconnected"),
    ]  # fmt: skip
    assert sessions[0].user.id == m.users[host] and sessions[0].user.displayName == host
    assert sessions[1].user.id == m.users[guest]


def test_update_session_state_and_metadata(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="s")
    metadata = {"agent": "bot", "tracks": 2, "ratio": 0.5, "muted": False}
    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="s", state="connected",
         metadata=metadata)  # fmt: skip
    (s,) = g.ok(SIG + "getActiveSessions", meetingId=m.id)
    assert (s["state"], s["metadata"]) == ("connected", metadata)
    # omitting metadata clears it
    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="s", state="connected")
    (s,) = g.ok(SIG + "getActiveSessions", meetingId=m.id)
    assert "metadata" not in s
    h.ok(SIG + "updateSessionState", meetingId=m.id, sessionId="s", state="connected", metadata={})
    assert g.ok(SIG + "getActiveSessions", meetingId=m.id)[0]["metadata"] == {}


@pytest.mark.parametrize("metadata", [{"nested": {"a": 1}}, {"list": [1, 2]}, {"none": None}])
def test_metadata_values_must_be_scalars(
    meeting: tuple[MeetingSetup, list[str]], metadata: dict[str, Any]
) -> None:
    m, (host, _guest) = meeting
    h = m.api(host)
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="s")
    detail = h.invalid(SIG + "updateSessionState", meetingId=m.id, sessionId="s",
                       state="connected", metadata=metadata)  # fmt: skip
    assert f"Path: .metadata.{next(iter(metadata))}" in detail


def test_update_needs_the_callers_own_session(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    m.api(host).ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="hosts")
    for sid in ("hosts", "missing"):
        body = m.api(guest).error(
            SIG + "updateSessionState", code="NOT_FOUND", meetingId=m.id, sessionId=sid,
            state="connected",
        )  # fmt: skip
        # Connvo's own wording: createError.notFound("WebRTC session not found") adds "not found"
        assert body["errorData"] == {
            "code": "NOT_FOUND", "message": "WebRTC session not found not found", "statusCode": 404
        }  # fmt: skip


def test_close_session(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    h.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="hosts")
    g.ok(SIG + "createWebRTCSession", meetingId=m.id, sessionId="guests")
    # unknown ids and other users' sessions are ignored, without an error
    assert g.ok(SIG + "closeSession", meetingId=m.id, sessionId="missing") is None
    assert g.ok(SIG + "closeSession", meetingId=m.id, sessionId="hosts") is None
    listed = {s["sessionId"] for s in h.ok(SIG + "getActiveSessions", meetingId=m.id)}
    assert listed == {"hosts", "guests"}
    assert g.ok(SIG + "closeSession", meetingId=m.id, sessionId="guests") is None
    assert [s["sessionId"] for s in h.ok(SIG + "getActiveSessions", meetingId=m.id)] == ["hosts"]
    assert g.ok(SIG + "closeSession", meetingId=m.id, sessionId="guests") is None  # again: fine


# --- signals -------------------------------------------------------------------------------------


def test_exchange_checks_only_participation(
    server2: DevServerProcess, http: httpx.Client, meeting: tuple[MeetingSetup, list[str]]
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
    # a target who is no participant, and a meeting that ended: both accepted
    stranger = unique("stranger")
    h.ok(
        SIG + "exchangeICECandidate", meetingId=m.id, sessionId="h",
        candidate={"candidate": ""}, targetUserId=server2.user_id(stranger),
    )  # fmt: skip
    server2.end_meeting(m.id, host)
    h.ok(
        SIG + "exchangeSessionDescription", meetingId=m.id, sessionId="h", description=offer,
        targetUserId=m.users[guest],
    )  # fmt: skip
    assert len(g.ok(SIG + "getPendingSignals", meetingId=m.id)) == 3


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
    raw = g.ok(SIG + "getPendingSignals", meetingId=m.id)
    # Connvo's rows: no toUserId (a row does not say whether it was a broadcast)
    assert all(
        set(s) == {"_id", "_creationTime", "sessionId", "fromUserId", "type", "data", "timestamp"}
        for s in raw
    )
    page = [models.Signal.model_validate(s) for s in raw]
    assert len(page) == 3
    assert all(s.sessionId == "h" and s.fromUserId == m.users[host] for s in page)
    kinds = sorted((s.type, s.data.model_dump(exclude_none=True).get("sdp", "")) for s in page)
    assert kinds[-1] == ("sdp", "v=0 offer")
    end = [s for s in page if s.type == "ice" and s.candidate.candidate == ""]
    assert len(end) == 1 and end[0].candidate.sdpMid is None  # absent fields stay absent
    assert all(isinstance(s["timestamp"], int) for s in raw)
    # the sender does not receive its own direct signals
    assert h.ok(SIG + "getPendingSignals", meetingId=m.id) == []
    assert g.ok(SIG + "markSignalsProcessed", signalIds=[s.id for s in page]) is None
    assert g.ok(SIG + "getPendingSignals", meetingId=m.id) == []


# --- transcripts ---------------------------------------------------------------------------------


def _chunk(meeting_id: str, text: str = "hello", start: float = 1000, **kw: Any) -> dict[str, Any]:
    return {
        "meetingId": meeting_id, "text": text, "confidence": 0.9, "startTime": start,
        "endTime": start + 1000, "speakerId": "spk", "language": "en", "isInterim": False, **kw,
    }  # fmt: skip


def test_transcript_sequence_and_bucket(meeting: tuple[MeetingSetup, list[str]]) -> None:
    m, (host, guest) = meeting
    h, g = m.api(host), m.api(guest)
    replies = [
        models.IngestTranscriptChunkResult.model_validate(h.ok(INGEST, **_chunk(m.id, start=t)))
        for t in (0, 299_999, 300_000, 1_234_567.5)
    ]
    assert [r.sequence for r in replies] == [1, 2, 3, 4]
    # the 5-minute storage bucket of the chunk's startTime
    assert [r.bucketMs for r in replies] == [0, 0, 300_000, 1_200_000]
    assert all(r.rateLimitRemaining == 0 and r.success for r in replies)  # Connvo's is always 0
    # the sequence is per meeting, across speakers
    assert g.ok(INGEST, **_chunk(m.id))["sequence"] == 5
    other, (other_host,) = setup_meeting(m.server, "other", client=h.client)
    assert other.api(other_host).ok(INGEST, **_chunk(other.id))["sequence"] == 1


def test_transcript_rate_limit(server2: DevServerProcess, http: httpx.Client) -> None:
    # 50 chunks per user in each fixed 60 s window. Should the run straddle two windows, the count
    # is not exact: the test then runs once more with fresh users.
    for _attempt in range(2):
        m, (host, guest) = setup_meeting(server2, "host", "guest", client=http)
        h = m.api(host)
        before = time.time() * 1000
        accepted = 0
        while (r := h.call(INGEST, _chunk(m.id))).json()["status"] == "success":
            accepted += 1
            assert accepted <= 2 * RATE_LIMIT_CHUNKS
        after = time.time() * 1000
        if before // RATE_LIMIT_WINDOW_MS != after // RATE_LIMIT_WINDOW_MS:
            continue
        assert r.status_code == 200
        data = r.json()["errorData"]
        assert (data["code"], data["statusCode"]) == ("RATE_LIMIT_EXCEEDED", 429)
        assert accepted == RATE_LIMIT_CHUNKS
        # seconds until the window resets, at least 1
        window_end = (before // RATE_LIMIT_WINDOW_MS + 1) * RATE_LIMIT_WINDOW_MS
        wait = data["metadata"]["retryAfterSeconds"]
        assert isinstance(wait, int) and wait >= 1
        assert max(1, math.ceil((window_end - after) / 1000)) <= wait
        assert wait <= max(1, math.ceil((window_end - before) / 1000))
        # a refused chunk takes no sequence number; the limit is per user
        assert m.api(guest).ok(INGEST, **_chunk(m.id))["sequence"] == RATE_LIMIT_CHUNKS + 1
        return
    pytest.fail("two runs straddled a window boundary")


def test_transcript_rate_limit_flag(tmp_path: Path, http: httpx.Client) -> None:
    # --transcript-rate-limit 3/2: three chunks in each fixed 2 s window.
    args = ["--transcript-rate-limit", "3/2"]
    with DevServerProcess(tmp_path / "db.sqlite", extra_args=args) as srv:
        for _attempt in range(3):
            m, (host, _guest) = setup_meeting(srv, "host", "guest", client=http)
            before = time.time()
            replies = [m.api(host).call(INGEST, _chunk(m.id)).json() for _ in range(4)]
            if before // 2 != time.time() // 2:
                continue  # straddled a window: try again with fresh users
            assert [r["status"] for r in replies] == ["success"] * 3 + ["error"]
            data = replies[3]["errorData"]
            assert data["code"] == "RATE_LIMIT_EXCEEDED"
            assert data["metadata"]["retryAfterSeconds"] in (1, 2)
            return
    pytest.fail("three runs straddled a window boundary")


def test_transcript_checks(
    server2: DevServerProcess, http: httpx.Client, meeting: tuple[MeetingSetup, list[str]]
) -> None:
    m, (host, _guest) = meeting
    h = m.api(host)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"text": ""}, "Transcript text cannot be empty"),
        ({"text": " \n\t "}, "Transcript text cannot be empty"),
        ({"confidence": 1.5}, "Confidence must be between 0 and 1"),
        ({"confidence": -0.1}, "Confidence must be between 0 and 1"),
        ({"startTime": 5, "endTime": 5}, "Start time must be before end time"),
        ({"startTime": 5, "endTime": 1}, "Start time must be before end time"),
        ({"text": "x" * 10_001}, "Transcript text too long (max 10,000 characters)"),
    ]
    for extra, message in cases:
        body = h.error(INGEST, code="VALIDATION_ERROR", **{**_chunk(m.id), **extra})
        assert _message(body) == message, extra
    assert h.ok(INGEST, **{**_chunk(m.id), "text": "x" * 10_000})["sequence"] == 1
    server2.end_meeting(m.id, host)
    body = h.error(INGEST, code="MEETING_NOT_ACTIVE", **_chunk(m.id))
    assert body["errorData"] == {
        "code": "MEETING_NOT_ACTIVE", "message": "Meeting is not currently active",
        "statusCode": 400, "metadata": {"meetingId": m.id},
    }  # fmt: skip
