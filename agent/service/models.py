"""What the service's HTTP API takes and gives (pydantic: the edge), and the bot's states.

A request is checked whole before anything is created: a bad field is a 422 naming it.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, field_validator

from agent.service.webhooks import check_secret

# Settings a request may not set through `settings`: they have fields of their own, or belong to
# the service (where files go, logging, metrics).
RESERVED_SETTINGS = frozenset(
    {
        "url",
        "token",
        "token_file",
        "meeting",
        "role",
        "audio",
        "video",
        "receive",
        "state_dir",
        "out",
        "metrics_port",
        "log_format",
        "log_level",
        "duration",
        # process-wide in a worker: set for the service and its workers (CONNVO_ICE_HOST_ADDRESSES)
        "ice_host_addresses",
    }
)


class InvalidKey(ValueError):
    """A validator's error about one key of the field it checks: the answer names
    `field.key`."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class BotState(enum.StrEnum):
    QUEUED = "queued"
    JOINING = "joining"
    IN_MEETING = "in_meeting"
    LEAVING = "leaving"
    ENDED = "ended"
    FAILED = "failed"


FINAL_STATES = frozenset({BotState.ENDED, BotState.FAILED})


class FailureReason(enum.StrEnum):
    """Why a bot `failed` (machine-readable)."""

    AUTH = "auth"  # the token does not verify, or is no Connvo user's
    MEETING_NOT_FOUND = "meeting_not_found"
    MEETING_NOT_ACTIVE = "meeting_not_active"
    NOT_A_PARTICIPANT = "not_a_participant"
    BACKEND_UNREACHABLE = "backend_unreachable"
    WORKER_LOST = "worker_lost"  # its worker died or hung, and it could not be run again
    INTERNAL = "internal"


class LeaveReason(enum.StrEnum):
    """Why a bot `ended` (left the meeting on its own or on request)."""

    ALONE = "alone"  # everyone else left, for `auto_leave.alone_s`
    NOBODY_JOINED = "nobody_joined"  # nobody else came, for `auto_leave.nobody_joined_s`
    NO_MEDIA = "no_media"  # no media received for `auto_leave.no_media_s`
    MAX_DURATION = "max_duration"
    MEETING_ENDED = "meeting_ended"  # the backend says the meeting ended
    REMOVED = "removed"  # this identity is no longer a participant of the meeting
    REQUESTED = "requested"  # DELETE /v1/bots/{id}
    SERVICE_STOPPED = "service_stopped"  # the service shut down for good (not a restart)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Seconds = Annotated[float, Field(gt=0, le=7 * 24 * 3600)]


class AutoLeave(_Strict):
    """When the bot leaves by itself; a rule set to null is off."""

    alone_s: Seconds | None = 60.0
    nobody_joined_s: Seconds | None = 600.0
    no_media_s: Seconds | None = 600.0
    # the no-media rule is checked only once the bot has been in the meeting this long
    no_media_after_s: Annotated[float, Field(ge=0, le=7 * 24 * 3600)] = 1200.0
    max_duration_s: Seconds | None = 4 * 3600.0


class Media(_Strict):
    """The bot role's media (the `audio`, `video` and `receive` keys of `connvo-agent run`)."""

    audio: str | None = Field(default=None, min_length=1)
    video: str | None = Field(default=None, min_length=1)
    receive: Literal["count", "decode"] | None = None


class WebhookTarget(_Strict):
    url: HttpUrl
    # Standard Webhooks secret: "whsec_" + base64 of 24 to 64 random bytes
    secret: SecretStr

    @field_validator("secret")
    @classmethod
    def _secret_format(cls, value: SecretStr) -> SecretStr:
        check_secret(value.get_secret_value())
        return value


class BotRequest(_Strict):
    """`POST /v1/bots`."""

    meeting_id: str = Field(min_length=1, max_length=128)
    url: HttpUrl  # the Convex deployment
    token: SecretStr | None = None
    token_file: str | None = Field(default=None, min_length=1)
    role: Literal["bot", "recorder", "transcriber"] = "bot"
    display_name: str | None = Field(default=None, min_length=1, max_length=200)
    media: Media = Field(default_factory=Media)
    # other keys of `connvo-agent run` (e.g. language, stt_engine, session_timeout)
    settings: dict[str, Any] = Field(default_factory=dict)
    auto_leave: AutoLeave = Field(default_factory=AutoLeave)
    webhook: WebhookTarget | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if key in RESERVED_SETTINGS:
                raise InvalidKey(key, "cannot be set in settings")
        return value

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value)) > 16_384:
            raise ValueError("more than 16 KiB of JSON")
        return value


class StateChange(BaseModel):
    state: BotState
    at: float  # Unix time
    reason: str | None = None
    detail: str | None = None
    worker: str | None = None


class ParticipantSeen(BaseModel):
    user_id: str
    display_name: str | None
    first_seen: float
    last_seen: float
    present: bool


class Connection(BaseModel):
    session_id: str
    user_id: str
    state: str
    rtt_ms: float | None = None
    packets_received: int = 0
    packets_lost: int = 0
    updated_at: float


class RecordedFile(BaseModel):
    user_id: str
    session_id: str
    kind: str
    path: str  # as in the manifest; downloads at /v1/bots/{id}/recordings/{path}
    duration_s: float
    error: str | None = None


class TranscriptCounts(BaseModel):
    chunks: int
    speakers: int


class Bot(BaseModel):
    """What `GET /v1/bots/{id}` answers. Never carries the token nor the webhook secret."""

    id: str
    meeting_id: str
    role: str
    state: BotState
    reason: str | None
    media_connected: bool  # the first media connection is up
    created_at: float
    updated_at: float
    worker: str | None
    attempt: int
    metadata: dict[str, Any]
    history: list[StateChange]
    participants: list[ParticipantSeen]
    connections: list[Connection]
    files: list[RecordedFile]
    transcript: TranscriptCounts
    last_error: str | None


class BotList(BaseModel):
    bots: list[Bot]
    # the `after` of the next page; None: this was the last page
    next_after: str | None = None


class TranscriptEntry(BaseModel):
    sequence: int | None
    speaker_id: str
    speaker_name: str | None
    text: str
    start_ms: int  # Unix ms
    end_ms: int
    language: str | None
    confidence: float | None


class Transcript(BaseModel):
    bot_id: str
    meeting_id: str
    entries: list[TranscriptEntry]


class ErrorBody(BaseModel):
    """Every error answer: `{"error": {"code", "message", "field"?}}`."""

    code: str
    message: str
    field: str | None = None


class ErrorAnswer(BaseModel):
    error: ErrorBody
