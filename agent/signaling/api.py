"""Typed calls of the Connvo functions the agent uses, over one `ConvexClient` (one identity)."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from agent.convex import AuthError, ConvexClient, ProtocolError
from agent.signaling import models as m

T = TypeVar("T")

SIGNALING = "meetings/webrtc/signaling"
LIFECYCLE = "meetings/lifecycle"


class ConnvoApi:
    """One method per function; arguments validated before sending, results parsed on return."""

    def __init__(self, client: ConvexClient) -> None:
        self.client = client

    async def _call(
        self, function: str, args: BaseModel, result: type[T] | Any, *, queued: bool = True
    ) -> T:
        value = await self.client.run(
            function, args.model_dump(exclude_none=True, by_alias=True), queued=queued
        )
        if result is None:
            return None  # type: ignore[return-value]
        try:
            return TypeAdapter(result).validate_python(value)  # type: ignore[no-any-return]
        except ValidationError as exc:
            raise ProtocolError(function, f"unexpected result: {_first_error(exc)}", 200) from None

    # --- signaling --------------------------------------------------------------------------

    async def create_webrtc_session(
        self, meeting_id: str, session_id: str
    ) -> m.CreateWebRTCSessionResult:
        return await self._call(
            f"{SIGNALING}/createWebRTCSession",
            m.CreateWebRTCSessionArgs(meetingId=meeting_id, sessionId=session_id),
            m.CreateWebRTCSessionResult,
        )

    async def send_description(
        self,
        meeting_id: str,
        session_id: str,
        description: m.SessionDescription,
        target_user_id: str | None,
    ) -> None:
        await self._call(
            f"{SIGNALING}/exchangeSessionDescription",
            m.ExchangeSessionDescriptionArgs(
                meetingId=meeting_id,
                sessionId=session_id,
                description=description,
                targetUserId=target_user_id,
            ),
            None,
        )

    async def send_candidate(
        self,
        meeting_id: str,
        session_id: str,
        candidate: m.IceCandidate,
        target_user_id: str | None,
    ) -> None:
        await self._call(
            f"{SIGNALING}/exchangeICECandidate",
            m.ExchangeICECandidateArgs(
                meetingId=meeting_id,
                sessionId=session_id,
                candidate=candidate,
                targetUserId=target_user_id,
            ),
            None,
        )

    async def get_pending_signals(
        self, meeting_id: str, *, last_signal_id: str | None = None
    ) -> list[Any]:
        """The raw page: the poller validates each row on its own, so one bad row loses nothing."""
        value = await self.client.run(
            f"{SIGNALING}/getPendingSignals",
            m.GetPendingSignalsArgs(meetingId=meeting_id, lastSignalId=last_signal_id).model_dump(
                exclude_none=True
            ),
            queued=False,  # one poll at a time per identity; a fetch never waits behind sends
        )
        if not isinstance(value, list):
            raise ProtocolError(f"{SIGNALING}/getPendingSignals", "page is not a list", 200)
        return value

    async def ack_signals(self, signal_ids: list[str]) -> None:
        await self._call(
            f"{SIGNALING}/markSignalsProcessed",
            m.MarkSignalsProcessedArgs(signalIds=signal_ids),
            None,
            queued=False,  # one batch at a time, and the next poll waits for it
        )

    async def update_session_state(
        self,
        meeting_id: str,
        session_id: str,
        state: m.SessionState,
        metadata: dict[str, m.MetadataValue] | None = None,
    ) -> None:
        await self._call(
            f"{SIGNALING}/updateSessionState",
            m.UpdateSessionStateArgs(
                meetingId=meeting_id, sessionId=session_id, state=state, metadata=metadata
            ),
            None,
        )

    async def get_active_sessions(self, meeting_id: str) -> list[m.ActiveSession]:
        return await self._call(
            f"{SIGNALING}/getActiveSessions",
            m.MeetingArgs(meetingId=meeting_id),
            list[m.ActiveSession],
        )

    async def close_session(self, meeting_id: str, session_id: str) -> None:
        await self._call(
            f"{SIGNALING}/closeSession",
            m.CloseSessionArgs(meetingId=meeting_id, sessionId=session_id),
            None,
        )

    # --- lifecycle, queries, transcripts -----------------------------------------------------

    async def join_meeting(self, meeting_id: str) -> m.JoinMeetingResult:
        return await self._call(
            f"{LIFECYCLE}/joinMeeting", m.MeetingArgs(meetingId=meeting_id), m.JoinMeetingResult
        )

    async def leave_meeting(self, meeting_id: str) -> m.LeaveMeetingResult:
        return await self._call(
            f"{LIFECYCLE}/leaveMeeting", m.MeetingArgs(meetingId=meeting_id), m.LeaveMeetingResult
        )

    async def get_connection_info(self, meeting_id: str) -> m.MeetingConnectionInfo:
        return await self._call(
            f"{LIFECYCLE}/getMeetingConnectionInfo",
            m.MeetingArgs(meetingId=meeting_id),
            m.MeetingConnectionInfo,
        )

    async def get_current_user(self) -> m.CurrentUser:
        """The token's Connvo user; AuthError when the token is valid but names nobody in Connvo
        (the function answers null then, not an error)."""
        function = "users/queries/getCurrentUser"
        user: m.CurrentUser | None = await self._call(function, m._Args(), m.CurrentUser | None)
        if user is None:
            raise AuthError(
                function,
                "the token is valid but its identity is not a Connvo user"
                " (sign in to Connvo once with this account, or use another token)",
            )
        return user

    async def get_meeting(self, meeting_id: str) -> m.Meeting:
        return await self._call(
            "meetings/queries/getMeeting", m.MeetingArgs(meetingId=meeting_id), m.Meeting
        )

    async def list_participants(self, meeting_id: str) -> list[m.MeetingParticipant]:
        return await self._call(
            "meetings/queries/listMeetingParticipants",
            m.MeetingArgs(meetingId=meeting_id),
            list[m.MeetingParticipant],
        )

    async def ingest_transcript_chunk(
        self, chunk: m.IngestTranscriptChunkArgs
    ) -> m.IngestTranscriptChunkResult:
        return await self._call(
            "transcripts/ingestion/ingestTranscriptChunk", chunk, m.IngestTranscriptChunkResult
        )


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    return f"{where}: {err['msg']}"
