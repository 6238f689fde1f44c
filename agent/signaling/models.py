"""Pydantic models of Connvo's Convex HTTP API: the wire format, shared with the dev backend.

Shapes follow `connvo-api-subset.yaml`. Argument models forbid extra fields, as Convex's argument
validators do. Fields that hold a Convex document ID are annotated with `TableId("table")`, which
names the table and validates nothing: the agent must not second-guess real Convex IDs.

This module is the API contract only; limits that only a server enforces (request body size,
its own checks of IDs and text) live with the dev backend, in agent/devserver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)

# Size limits of what the agent sends and accepts. A browser's SDP with a few tracks is 3-15 KB;
# 64 KiB leaves room for large meshes and simulcast while keeping a hostile 1 MB SDP out.
MAX_SDP_CHARS = 64 * 1024
MAX_CANDIDATE_CHARS = 1024
MAX_SESSION_ID_CHARS = 128
MAX_TRANSCRIPT_CHARS = 10_000  # Connvo refuses longer transcript chunks
MAX_SIGNAL_IDS_PER_ACK = 500  # the agent acknowledges at most this many signals per call


@dataclass(frozen=True)
class TableId:
    """Marks a string as a Convex ID of `table` (documentation; pydantic ignores it)."""

    table: str


MeetingId = Annotated[str, TableId("meetings")]
UserId = Annotated[str, TableId("users")]
SignalId = Annotated[str, TableId("webrtcSignals")]
SessionId = Annotated[str, Field(min_length=1, max_length=MAX_SESSION_ID_CHARS)]

SdpType = Literal["offer", "answer", "pranswer", "rollback"]
SignalType = Literal["sdp", "ice"]
SessionState = Literal["connecting", "connected", "disconnected", "failed", "closed"]
MeetingState = Literal["scheduled", "active", "concluded", "cancelled"]
ParticipantRole = Literal["host", "co-host", "participant", "observer"]
Presence = Literal["invited", "joined", "left"]
VideoProvider = Literal["webrtc", "getstream"]


class _Args(BaseModel):
    """Function arguments: unknown fields are an error, as in Convex's validators."""

    model_config = ConfigDict(extra="forbid")


class _Value(BaseModel):
    """Function results: tolerate fields added by newer servers."""

    model_config = ConfigDict(extra="allow")


# --- signal payloads -------------------------------------------------------------------------


class SessionDescription(_Args):
    type: SdpType
    # rollback carries an empty SDP in browsers
    sdp: str = Field(max_length=MAX_SDP_CHARS)


class IceCandidate(_Args):
    """An ICE candidate as browsers serialise it. An empty `candidate` means end-of-candidates."""

    candidate: str = Field(max_length=MAX_CANDIDATE_CHARS)
    sdpMLineIndex: int | None = Field(default=None, ge=0, le=1024)
    sdpMid: str | None = Field(default=None, max_length=64)
    usernameFragment: str | None = Field(default=None, max_length=256)

    @property
    def ends_candidates(self) -> bool:
        """The end-of-candidates marker (an empty candidate line)."""
        return not self.candidate.strip()


class Signal(BaseModel):
    """One row of `getPendingSignals`: `sessionId` is the sender's session."""

    model_config = ConfigDict(extra="ignore")

    id: SignalId = Field(alias="_id", min_length=1, max_length=128)
    sessionId: SessionId
    fromUserId: UserId = Field(min_length=1, max_length=128)
    type: SignalType
    data: SessionDescription | IceCandidate
    timestamp: float

    @model_validator(mode="before")
    @classmethod
    def _data_matches_type(cls, raw: Any) -> Any:
        # Pick the payload model from the outer `type`, so an "ice" row with SDP data is an error
        # instead of being silently read as the other variant.
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict):
            kind = raw.get("type")
            if kind == "sdp":
                raw = {**raw, "data": SessionDescription.model_validate(raw["data"])}
            elif kind == "ice":
                raw = {**raw, "data": IceCandidate.model_validate(raw["data"])}
        return raw

    @property
    def description(self) -> SessionDescription:
        assert isinstance(self.data, SessionDescription)
        return self.data

    @property
    def candidate(self) -> IceCandidate:
        assert isinstance(self.data, IceCandidate)
        return self.data


# --- meetings/webrtc/signaling ---------------------------------------------------------------


class CreateWebRTCSessionArgs(_Args):
    meetingId: MeetingId
    sessionId: SessionId


class CreateWebRTCSessionResult(_Value):
    sessionId: str
    success: bool


class ExchangeSessionDescriptionArgs(_Args):
    meetingId: MeetingId
    sessionId: SessionId
    description: SessionDescription
    targetUserId: UserId | None = None


class ExchangeICECandidateArgs(_Args):
    meetingId: MeetingId
    sessionId: SessionId
    candidate: IceCandidate
    targetUserId: UserId | None = None


class GetPendingSignalsArgs(_Args):
    meetingId: MeetingId
    sessionId: SessionId | None = None
    lastSignalId: SignalId | None = None


class MarkSignalsProcessedArgs(_Args):
    signalIds: list[SignalId] = Field(max_length=MAX_SIGNAL_IDS_PER_ACK)


MetadataValue = str | int | float | bool


class UpdateSessionStateArgs(_Args):
    meetingId: MeetingId
    sessionId: SessionId
    state: SessionState
    metadata: dict[str, MetadataValue] | None = None


class MeetingArgs(_Args):
    """Arguments of every function that takes only a meeting ID."""

    meetingId: MeetingId


GetActiveSessionsArgs = MeetingArgs


class CloseSessionArgs(_Args):
    meetingId: MeetingId
    sessionId: SessionId


class UserSummary(_Value):
    id: str = Field(alias="_id")
    displayName: str | None = None
    avatarUrl: str | None = None


class ActiveSession(_Value):
    id: str = Field(alias="_id")
    creationTime: float = Field(alias="_creationTime")
    meetingId: str
    sessionId: str
    userId: str
    state: SessionState
    createdAt: float
    updatedAt: float
    user: UserSummary
    metadata: dict[str, Any] | None = None
    connectionQuality: Literal["excellent", "good", "fair", "poor"] | None = None
    lastMetricsAt: float | None = None


# --- meetings/lifecycle ----------------------------------------------------------------------


class MeetingFeatures(_Value):
    recording: bool
    transcription: bool
    maxParticipants: int


class CreateMeetingArgs(_Args):
    title: str = Field(max_length=500)
    description: str | None = Field(default=None, max_length=5000)
    scheduledAt: float | None = None
    duration: float | None = None
    participantEmails: list[str] | None = Field(default=None, max_length=1000)
    recordingEnabled: bool | None = None
    transcriptionEnabled: bool | None = None
    meetingType: Literal["one-on-one", "small-group", "large-meeting", "webinar"] | None = None
    maxParticipants: int | None = Field(default=None, ge=1, le=100_000)
    organizerId: UserId | None = None


class CreateMeetingResult(_Value):
    meetingId: str
    webrtcReady: bool
    videoProvider: VideoProvider
    features: MeetingFeatures


class AddParticipantArgs(_Args):
    meetingId: MeetingId
    userId: UserId
    role: ParticipantRole


class AddParticipantResult(_Value):
    participantId: str
    success: bool


class IceServer(_Value):
    urls: str | list[str]
    username: str | None = None
    credential: str | None = None


class RoomInfo(_Value):
    roomId: str | None = None
    iceServers: list[IceServer] = []


class StartMeetingResult(_Value):
    success: bool
    webrtcReady: bool
    videoProvider: VideoProvider
    roomInfo: RoomInfo | None = None


class EndMeetingResult(_Value):
    success: bool
    duration: float | None = None


class ConnectionInfo(_Value):
    roomId: str | None = None
    streamToken: str | None = None
    iceServers: list[IceServer] = []


class MeetingConnectionInfo(_Value):
    success: bool
    videoProvider: VideoProvider
    connectionInfo: ConnectionInfo
    features: MeetingFeatures


class JoinMeetingResult(_Value):
    success: bool
    webrtcReady: bool


class LeaveMeetingResult(_Value):
    success: bool


# --- meetings/queries, users/queries ---------------------------------------------------------


class Meeting(_Value):
    id: str = Field(alias="_id")
    creationTime: float = Field(alias="_creationTime")
    title: str
    organizerId: str
    state: MeetingState
    createdAt: float
    updatedAt: float
    activeWebRTCSessions: int
    userPresence: Presence
    userRole: Literal["host", "participant", "observer"]
    description: str | None = None
    scheduledAt: float | None = None
    duration: float | None = None
    participantCount: int | None = None
    webrtcEnabled: bool | None = None
    streamRoomId: str | None = None
    averageRating: float | None = None


class MeetingParticipant(_Value):
    id: str = Field(alias="_id")
    creationTime: float = Field(alias="_creationTime")
    meetingId: str
    userId: str
    role: Literal["host", "participant", "observer"]
    presence: Presence
    createdAt: float
    joinedAt: float | None = None
    leftAt: float | None = None
    webrtcConnected: bool
    webrtcSessionCount: int
    user: UserSummary


GetCurrentUserArgs = _Args


class CurrentUser(_Value):
    id: str = Field(alias="_id")
    creationTime: float = Field(alias="_creationTime")
    email: str
    isActive: bool
    workosUserId: str
    createdAt: float
    updatedAt: float
    displayName: str | None = None
    avatarUrl: str | None = None


# --- transcripts/ingestion -------------------------------------------------------------------


class IngestTranscriptChunkArgs(_Args):
    meetingId: MeetingId
    speakerId: str | None = Field(default=None, max_length=128)
    text: str = Field(max_length=MAX_TRANSCRIPT_CHARS)
    confidence: float = Field(ge=0.0, le=1.0)
    startTime: float = Field(ge=0)
    endTime: float = Field(ge=0)
    language: str | None = Field(default=None, max_length=32)
    isInterim: bool | None = None


class IngestTranscriptChunkResult(_Value):
    success: bool
    sequence: int
    bucketMs: float
    rateLimitRemaining: int


# --- envelopes -------------------------------------------------------------------------------


class RunRequest(BaseModel):
    """Body of `POST /api/run/{path}`."""

    model_config = ConfigDict(extra="forbid")

    args: dict[str, Any] = {}
    format: Literal["json"] = "json"


class SuccessEnvelope(BaseModel):
    status: Literal["success"] = "success"
    value: Any = None
    logLines: list[str] = []


class ErrorEnvelope(BaseModel):
    status: Literal["error"] = "error"
    errorMessage: str
    errorData: dict[str, Any] = {}


# Function path -> argument model. The dev backend serves exactly these; the agent's typed API calls
# them. Results are validated by the caller with the matching result model.
FUNCTION_ARGS: dict[str, type[BaseModel]] = {
    "meetings/webrtc/signaling/createWebRTCSession": CreateWebRTCSessionArgs,
    "meetings/webrtc/signaling/exchangeSessionDescription": ExchangeSessionDescriptionArgs,
    "meetings/webrtc/signaling/exchangeICECandidate": ExchangeICECandidateArgs,
    "meetings/webrtc/signaling/getPendingSignals": GetPendingSignalsArgs,
    "meetings/webrtc/signaling/markSignalsProcessed": MarkSignalsProcessedArgs,
    "meetings/webrtc/signaling/updateSessionState": UpdateSessionStateArgs,
    "meetings/webrtc/signaling/getActiveSessions": GetActiveSessionsArgs,
    "meetings/webrtc/signaling/closeSession": CloseSessionArgs,
    "meetings/lifecycle/createMeeting": CreateMeetingArgs,
    "meetings/lifecycle/addParticipant": AddParticipantArgs,
    "meetings/lifecycle/startMeeting": MeetingArgs,
    "meetings/lifecycle/endMeeting": MeetingArgs,
    "meetings/lifecycle/joinMeeting": MeetingArgs,
    "meetings/lifecycle/leaveMeeting": MeetingArgs,
    "meetings/lifecycle/getMeetingConnectionInfo": MeetingArgs,
    "meetings/queries/getMeeting": MeetingArgs,
    "meetings/queries/listMeetingParticipants": MeetingArgs,
    "users/queries/getCurrentUser": GetCurrentUserArgs,
    "transcripts/ingestion/ingestTranscriptChunk": IngestTranscriptChunkArgs,
}
