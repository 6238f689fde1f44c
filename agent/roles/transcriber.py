"""The transcriber: joins without sending media, transcribes each remote participant's audio.

Built on the public API. Per remote audio track (`TrackAdded`): its audio as 16 kHz mono PCM
(`track.audio()`), utterances cut with WebRTC VAD, recognised with the configured engine (in a
worker thread, so the event loop keeps receiving), each final utterance put into the outbox.
Timestamps are the frames' capture times (epoch milliseconds from the RTP timestamps, anchored
on the arrival of the stream's first frame); a gap in the stream (the sender paused) ends the
current utterance.

The outbox (`state_dir/<meeting>--<user>.outbox.sqlite`) holds every chunk until the backend
accepted it, so a restart loses nothing: pending chunks are posted first. One poster task (in the
transcriber's own TaskGroup) posts them in order with `ingestTranscriptChunk`:

- it stays within Connvo's limit of 50 chunks per minute per user by itself: at most
  `RATE_LIMIT_CHUNKS` posts in any 60 s (a sliding window, so also in any of the server's fixed
  windows). A `RATE_LIMIT_EXCEEDED` error all the same (another process posting with the same
  identity) waits `metadata.retryAfterSeconds` and posts the same chunk again: a rate-limited chunk
  is never dropped and never overtaken. The reply's `bucketMs` is the chunk's storage bucket and its
  `rateLimitRemaining` is always 0 on Connvo's server: neither paces anything;
- failures that certainly did not apply the chunk (an HTTP 429/5xx answer, a refused connection)
  are retried with capped backoff;
- a failure after which the chunk may have been stored (a timeout, a connection dropped after the
  request was sent) is not re-posted, since the API has no idempotency key: the chunk is marked
  `uncertain` in the outbox and logged (at most once, never twice);
- other function errors (meeting ended, bad arguments) mark it `rejected`.

The local transcript (`<out or state_dir/transcripts>/<meeting>/transcript.jsonl` and
`transcript.vtt`) gets each final utterance when it is queued.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.config import default_of
from agent.convex import AuthError, ConvexError, FunctionError, TransientError
from agent.media.recording import safe_path_component
from agent.media.speech import (
    SAMPLE_RATE,
    Recognizer,
    SttEngine,
    UtteranceAudio,
    UtteranceCutter,
    UtteranceEnd,
    UtteranceStart,
    require_vad,
)
from agent.meeting import AudioFrame, AudioStream, Event, Meeting, TrackAdded
from agent.peer.participant import Participant, ParticipantSettings
from agent.roles.meeting_loop import run_meeting
from agent.signaling.api import ConnvoApi
from agent.signaling.models import IngestTranscriptChunkArgs

log = logging.getLogger(__name__)

RATE_WINDOW_S = 60.0
RATE_LIMIT_CHUNKS = 50  # Connvo's ingestTranscriptChunk: 50 chunks per minute per user
# RATE_LIMIT_EXCEEDED is Connvo's code; RATE_LIMITED is what other Convex apps call it.
RATE_LIMIT_CODES = frozenset({"RATE_LIMIT_EXCEEDED", "RATE_LIMITED"})
DEFAULT_RATE_LIMIT_WAIT_S = 5.0  # when the error does not say how long
GAP_S = 1.0  # a pause in the stream longer than this ends the current utterance
ACCEPT_BATCH_S = 0.2  # audio handed to the recogniser per worker-thread call
INTERIM_INTERVAL_S = 2.0
INTERIM_RESERVE = 10  # interim chunks are skipped when fewer posts than this remain in a window
DRAIN_TIMEOUT_S = 3.0
# Audio a track's recogniser may fall behind by (a Whisper decode at the end of an utterance takes
# seconds on a CPU) before the oldest frames are dropped.
MAX_BEHIND_MS = 120_000


@dataclass
class TranscriberSettings:
    # the defaults of the `language`, `vad_aggressiveness` and `transcript_interim` keys
    language: str = default_of("language")
    vad_aggressiveness: int = default_of("vad_aggressiveness")
    interim: bool = default_of("transcript_interim")
    transcript_dir: Path | None = None  # default: state_dir/transcripts
    drain_timeout: float = DRAIN_TIMEOUT_S


@dataclass
class Chunk:
    """One utterance, as queued and as written to the local transcript."""

    chunkId: str
    meetingId: str
    speakerId: str
    sessionId: str
    text: str
    confidence: float
    startTime: int  # epoch ms
    endTime: int
    language: str
    isInterim: bool = False
    utteranceId: str = ""

    def args(self) -> IngestTranscriptChunkArgs:
        return IngestTranscriptChunkArgs(
            meetingId=self.meetingId,
            speakerId=self.speakerId,
            text=self.text,
            confidence=round(self.confidence, 4),
            startTime=self.startTime,
            # The server wants startTime < endTime strictly; a one-frame utterance may tie.
            endTime=max(self.endTime, self.startTime + 1),
            language=self.language,
            isInterim=self.isInterim,
        )


# --- outbox -----------------------------------------------------------------------------------


class Outbox:
    """Chunks waiting to be posted, in SQLite: state pending -> posted | uncertain | rejected."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,"
            " chunk_id TEXT UNIQUE NOT NULL, chunk TEXT NOT NULL, state TEXT NOT NULL,"
            " attempts INTEGER NOT NULL DEFAULT 0, sequence INTEGER, error TEXT,"
            " created_at REAL NOT NULL, posted_at REAL)"
        )

    def add(self, chunk: Chunk) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO outbox (chunk_id, chunk, state, created_at)"
            " VALUES (?, ?, 'pending', ?)",
            (chunk.chunkId, json.dumps(asdict(chunk)), time.time()),
        )

    def pending(self) -> list[Chunk]:
        rows = self._db.execute(
            "SELECT chunk FROM outbox WHERE state = 'pending' ORDER BY seq"
        ).fetchall()
        return [Chunk(**json.loads(r[0])) for r in rows]

    def mark(
        self, chunk_id: str, state: str, *, sequence: int | None = None, error: str | None = None
    ) -> None:
        self._db.execute(
            "UPDATE outbox SET state = ?, sequence = ?, error = ?, attempts = attempts + 1,"
            " posted_at = ? WHERE chunk_id = ?",
            (state, sequence, error, time.time(), chunk_id),
        )

    def attempted(self, chunk_id: str) -> None:
        self._db.execute(
            "UPDATE outbox SET attempts = attempts + 1 WHERE chunk_id = ?", (chunk_id,)
        )

    def counts(self) -> dict[str, int]:
        rows = self._db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall()
        return {str(state): int(n) for state, n in rows}

    def close(self) -> None:
        self._db.close()


# --- local transcript -------------------------------------------------------------------------


def _vtt_time(seconds: float) -> str:
    ms = max(0, round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}.{ms:03d}"


class LocalTranscript:
    """transcript.jsonl (one final chunk a line, appended) and transcript.vtt (re-rendered)."""

    def __init__(self, directory: Path) -> None:
        self.jsonl = directory / "transcript.jsonl"
        self.vtt = directory / "transcript.vtt"
        self.entries: list[dict[str, Any]] = []
        self._error: str | None = None
        with contextlib.suppress(OSError, ValueError):
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    self.entries.append(json.loads(line))

    def add(self, chunk: Chunk) -> None:
        entry = asdict(chunk)
        del entry["isInterim"], entry["utteranceId"]
        self.entries.append(entry)
        try:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            with self.jsonl.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
            tmp = self.vtt.with_name(".transcript.vtt.tmp")
            tmp.write_text(self.render_vtt(), encoding="utf-8")
            tmp.replace(self.vtt)
        except OSError as exc:
            message = f"cannot write the local transcript in {self.jsonl.parent}: {exc.strerror}"
            if message != self._error:
                log.error("%s", message)
                self._error = message

    def render_vtt(self) -> str:
        entries = sorted(self.entries, key=lambda e: (e["startTime"], e["speakerId"]))
        zero = (entries[0]["startTime"] // 1000) * 1000 if entries else 0
        lines = ["WEBVTT", "", f"NOTE 00:00:00.000 is {zero} ms since the epoch (UTC)", ""]
        for e in entries:
            start = (e["startTime"] - zero) / 1000
            end = max(e["endTime"] - zero, e["startTime"] - zero + 1) / 1000
            speaker = str(e["speakerId"]).replace(">", "")
            text = str(e["text"]).replace("\n", " ").replace("-->", "->")
            lines += [
                e["chunkId"],
                f"{_vtt_time(start)} --> {_vtt_time(end)}",
                f"<v {speaker}>{text}",
                "",
            ]
        return "\n".join(lines)


# --- one stream -------------------------------------------------------------------------------


@dataclass
class _Utterance:
    id: str
    start: int  # samples
    pcm_batch: bytearray
    last_interim_at: float = 0.0
    interim_text: str = ""


class StreamTranscriber:
    """The synchronous core for one audio track: frames in, chunks out. Not for the event loop:
    `push` runs the VAD and the recogniser, so the consumer calls it in a worker thread."""

    def __init__(
        self,
        recognizer: Recognizer,
        meeting_id: str,
        speaker_id: str,
        session_id: str,
        settings: TranscriberSettings,
        *,
        interim: bool,
    ) -> None:
        self._recognizer = recognizer
        self._meeting_id = meeting_id
        self._speaker = speaker_id
        self._session = session_id
        self._settings = settings
        self._interim = interim
        self._cutter = UtteranceCutter(settings.vad_aggressiveness)
        self._anchor: float | None = None  # epoch seconds of sample 0
        self._samples = 0  # samples pushed (16 kHz), including skipped gaps
        self._utterance: _Utterance | None = None
        self._lock = threading.Lock()
        self.audio_seconds = 0.0  # audio received
        self.busy_seconds = 0.0  # time spent in push/finish (for the real-time factor)

    def _epoch_ms(self, samples: int) -> int:
        assert self._anchor is not None
        return round((self._anchor + samples / SAMPLE_RATE) * 1000)

    def push(self, frames: list[AudioFrame]) -> list[Chunk]:
        """Process 16 kHz mono frames (with their capture times); returns the chunks produced."""
        with self._lock:
            started = time.perf_counter()
            out: list[Chunk] = []
            for frame in frames:
                begins = frame.capture_time_ms / 1000
                ends = begins + frame.samples / SAMPLE_RATE
                self.audio_seconds += frame.samples / SAMPLE_RATE
                if self._anchor is None:
                    self._anchor = begins
                gap = begins - (self._anchor + self._samples / SAMPLE_RATE)
                if gap > GAP_S:
                    out += self._events(self._cutter.flush(), ends)
                    skipped = round(gap * SAMPLE_RATE)
                    self._cutter.skip(skipped)
                    self._samples += skipped
                self._samples += frame.samples
                out += self._events(self._cutter.push(frame.pcm), ends)
            self.busy_seconds += time.perf_counter() - started
            return out

    def finish(self) -> list[Chunk]:
        """End the current utterance (track ended, or shutdown)."""
        with self._lock:
            started = time.perf_counter()
            out = self._events(self._cutter.flush(), time.time())
            self.busy_seconds += time.perf_counter() - started
            return out

    def _events(self, events: Any, now: float) -> list[Chunk]:
        out: list[Chunk] = []
        for event in events:
            if isinstance(event, UtteranceStart):
                self._utterance = _Utterance(uuid.uuid4().hex, event.offset, bytearray())
            elif isinstance(event, UtteranceAudio) and self._utterance is not None:
                u = self._utterance
                u.pcm_batch += event.pcm
                if len(u.pcm_batch) >= ACCEPT_BATCH_S * SAMPLE_RATE * 2:
                    interim = self._recognizer.accept(bytes(u.pcm_batch))
                    u.pcm_batch.clear()
                    if (
                        self._interim
                        and interim
                        and interim != u.interim_text
                        and now - u.last_interim_at >= INTERIM_INTERVAL_S
                    ):
                        u.interim_text, u.last_interim_at = interim, now
                        out.append(self._chunk(u, interim, 0.0, self._samples, interim=True))
            elif isinstance(event, UtteranceEnd) and self._utterance is not None:
                u, self._utterance = self._utterance, None
                if u.pcm_batch:
                    self._recognizer.accept(bytes(u.pcm_batch))
                result = self._recognizer.result()
                text = result.text.strip()
                if text:
                    out.append(self._chunk(u, text, result.confidence, event.offset, interim=False))
        return out

    def _chunk(
        self, u: _Utterance, text: str, confidence: float, end: int, *, interim: bool
    ) -> Chunk:
        return Chunk(
            chunkId=uuid.uuid4().hex,
            meetingId=self._meeting_id,
            speakerId=self._speaker,
            sessionId=self._session,
            text=text,
            confidence=confidence,
            startTime=self._epoch_ms(u.start),
            endTime=self._epoch_ms(end),
            language=self._settings.language,
            isInterim=interim,
            utteranceId=u.id,
        )


# --- the role ---------------------------------------------------------------------------------


class Transcriber:
    """A meeting with no local tracks whose remote audio tracks are transcribed.

    `ingest_api` should be a client without automatic retries (RetryPolicy(max_attempts=1)):
    the poster decides which failures may be retried without posting a chunk twice.
    """

    def __init__(
        self,
        api: ConnvoApi,
        settings: ParticipantSettings,
        engine: SttEngine,
        options: TranscriberSettings | None = None,
        *,
        ingest_api: ConnvoApi | None = None,
    ) -> None:
        require_vad()  # before joining, rather than when the first audio track arrives
        self.settings = settings
        self.options = options or TranscriberSettings()
        self.engine = engine
        self.ingest_api = ingest_api or api
        self.meeting = Meeting(api, settings, tracks_for_peer=list)
        directory = self.options.transcript_dir or settings.state_dir / "transcripts"
        self.transcript = LocalTranscript(directory / safe_path_component(settings.meeting_id))
        self.streams: dict[str, StreamTranscriber] = {}  # remote session id -> latest stream
        self.posted: list[tuple[Chunk, int]] = []  # (chunk, sequence), this run
        self.first_track = asyncio.Event()
        self._outbox: Outbox | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._not_before = 0.0  # epoch s: rate limit gate
        self._recent_posts: collections.deque[float] = collections.deque()  # monotonic times
        self.final_counts: dict[str, int] = {}  # outbox states when run() ended
        self.rate_limited = 0  # posts the server refused for its rate limit (posted again later)
        # called with each chunk the backend stored, and its sequence, as it is stored
        self.on_posted: Callable[[Chunk, int], None] | None = None

    @property
    def participant(self) -> Participant:
        return self.meeting.participant

    @property
    def outbox(self) -> Outbox:
        if self._outbox is None:
            local = self.participant.local
            assert local is not None, "the outbox opens after joining"
            meeting_part = safe_path_component(local.meeting_id)
            name = f"{meeting_part}--{safe_path_component(local.user_id)}.outbox.sqlite"
            self._outbox = Outbox(self.settings.state_dir / name)
        return self._outbox

    # --- media ---------------------------------------------------------------------------------

    def _on_event(self, event: Event, tasks: asyncio.TaskGroup) -> None:
        if not isinstance(event, TrackAdded) or event.kind != "audio":
            return
        self.first_track.set()
        track = event.track
        stream = track.audio(sample_rate=SAMPLE_RATE, max_queued_ms=MAX_BEHIND_MS)
        tasks.create_task(
            self._transcribe(track.participant.user_id, track.session_id, stream),
            name=f"transcribe-{track.session_id}",
        )

    async def _transcribe(self, speaker: str, session_id: str, audio: AudioStream) -> None:
        recognizer = await asyncio.to_thread(self.engine.recognizer)
        stream = StreamTranscriber(
            recognizer,
            self.settings.meeting_id,
            speaker,
            session_id,
            self.options,
            interim=self.options.interim and self.engine.interim,
        )
        self.streams[session_id] = stream
        log.info("transcribing user %s, session %s (%s)", speaker, session_id, self.engine.name)
        # Frames are read by a reader of their own, not when the engine is ready for them: an
        # engine that falls behind for a moment (vosk expanding its graph, a Whisper decode at
        # the end of an utterance) catches up with everything that arrived meanwhile.
        received: asyncio.Queue[AudioFrame | None] = asyncio.Queue()

        async def receive() -> None:
            try:
                async for frame in audio:
                    received.put_nowait(frame)
            finally:
                received.put_nowait(None)

        reader = asyncio.create_task(receive(), name=f"transcriber-receive-{session_id}")
        batch: list[AudioFrame] = []
        ended = False
        try:
            while not ended:
                item = await received.get()
                while item is not None:  # all that has arrived (more when catching up)
                    batch.append(item)
                    if received.empty():
                        break
                    item = received.get_nowait()
                ended = item is None
                if len(batch) >= 10 or ended:  # at least 200 ms of audio per worker-thread call
                    full, batch = batch, []
                    self._queue(await asyncio.to_thread(stream.push, full))
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)  # owned: never left running
            # Also on cancellation (shutdown): what has arrived and the last utterance are kept.
            while not received.empty():
                if (item := received.get_nowait()) is not None:
                    batch.append(item)
            self._queue(stream.push(batch) + stream.finish())
            if audio.dropped:
                log.warning("session %s: %d audio frames dropped behind", session_id, audio.dropped)

    def _queue(self, chunks: list[Chunk]) -> None:
        for chunk in chunks:
            self.outbox.add(chunk)
            if not chunk.isInterim:
                self.transcript.add(chunk)
                log.info(
                    "utterance of %s (%d ms): %r",
                    chunk.speakerId,
                    chunk.endTime - chunk.startTime,
                    chunk.text,
                )
        if chunks:
            self._wake.set()

    # --- posting -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            poster = tasks.create_task(self._post_loop(), name="transcript-poster")
            try:
                await run_meeting(self.meeting, stop, self._on_event)
            finally:
                self._closing.set()
                self._wake.set()
                try:
                    async with asyncio.timeout(self.options.drain_timeout):
                        await asyncio.shield(poster)
                except TimeoutError:
                    log.warning("transcript chunks left in the outbox for the next run")
                    poster.cancel()
        if self._outbox is not None:
            self.final_counts = self._outbox.counts()
            self._outbox.close()
            self._outbox = None

    async def _post_loop(self) -> None:
        joined = asyncio.create_task(self.participant.joined.wait())
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({joined, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            joined.cancel()
            closing.cancel()
        if not self.participant.joined.is_set():
            return
        failures = 0
        while True:
            self._wake.clear()
            pending = self.outbox.pending()
            if self._closing.is_set() and not pending:
                return
            if not pending:
                await self._wake.wait()
                continue
            for chunk in pending:
                if chunk.isInterim and self._skip_interim(chunk, pending):
                    self.outbox.mark(chunk.chunkId, "skipped")
                    continue
                delay = max(self._not_before - time.time(), self._window_wait())
                if delay > 0:
                    if self._closing.is_set():
                        return  # rate limited at shutdown: the outbox keeps it
                    await self._sleep(delay)
                ok = await self._post(chunk)
                if ok is None:  # retry later, with backoff
                    if self._closing.is_set():
                        return  # shutting down: the outbox keeps it for the next run
                    failures += 1
                    await self._sleep(min(10.0, 0.2 * 2**failures) * random.uniform(0.5, 1.0))
                    break
                failures = 0

    def _skip_interim(self, chunk: Chunk, pending: list[Chunk]) -> bool:
        if any(c.utteranceId == chunk.utteranceId and not c.isInterim for c in pending):
            return True
        return self._window_left() < INTERIM_RESERVE

    def _window_left(self) -> int:
        cutoff = time.monotonic() - RATE_WINDOW_S
        while self._recent_posts and self._recent_posts[0] <= cutoff:
            self._recent_posts.popleft()
        return RATE_LIMIT_CHUNKS - len(self._recent_posts)

    def _window_wait(self) -> float:
        """Seconds until one more post fits in the last minute's budget."""
        if self._window_left() > 0:
            return 0.0
        return self._recent_posts[0] + RATE_WINDOW_S - time.monotonic()

    async def _sleep(self, seconds: float) -> None:
        # Woken early only by shutdown (so a long rate-limit wait does not hold the process).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, seconds)):
                await self._closing.wait()

    async def _post(self, chunk: Chunk) -> bool | None:
        """True: posted; False: given up (rejected or uncertain); None: retry later."""
        self._recent_posts.append(time.monotonic())  # counts whether it is stored or refused
        try:
            result = await self.ingest_api.ingest_transcript_chunk(chunk.args())
        except FunctionError as exc:
            if exc.code in RATE_LIMIT_CODES:
                wait = _retry_after(exc)
                self.rate_limited += 1
                self._not_before = time.time() + wait
                log.info("transcript rate limit reached; posting again in %.1f s", wait)
                self.outbox.attempted(chunk.chunkId)
                return None
            log.error("transcript chunk %s rejected: %s", chunk.chunkId, exc.message)
            self.outbox.mark(chunk.chunkId, "rejected", error=exc.message)
            return False
        except TransientError as exc:
            if exc.status is not None or "ConnectError" in exc.message:
                # An answer came back (429/5xx), or nothing was sent: the chunk was not stored.
                log.info(
                    "transcript chunk %s not stored (%s); retrying", chunk.chunkId, exc.message
                )
                self.outbox.attempted(chunk.chunkId)
                if exc.retry_after is not None:
                    self._not_before = time.time() + min(RATE_WINDOW_S, exc.retry_after)
                return None
            log.warning(
                "transcript chunk %s may or may not be stored (%s); not re-posting it",
                chunk.chunkId,
                exc.message,
            )
            self.outbox.mark(chunk.chunkId, "uncertain", error=exc.message)
            return False
        except (AuthError, ConvexError) as exc:
            log.warning("transcript chunk %s: %s; retrying", chunk.chunkId, exc.message)
            self.outbox.attempted(chunk.chunkId)
            return None
        self.outbox.mark(chunk.chunkId, "posted", sequence=result.sequence)
        self.posted.append((chunk, result.sequence))
        if self.on_posted is not None:
            self.on_posted(chunk, result.sequence)
        return True

    def summary_lines(self) -> list[str]:
        counts = self._outbox.counts() if self._outbox is not None else self.final_counts
        lines = [f"transcript {self.transcript.jsonl}: {len(self.transcript.entries)} utterances"]
        lines.append(
            "outbox: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "empty")
        )
        for session_id, s in self.streams.items():
            rtf = s.busy_seconds / s.audio_seconds if s.audio_seconds else 0.0
            lines.append(
                f"session {session_id}: {s.audio_seconds:.1f} s of audio, "
                f"real-time factor {rtf:.3f}"
            )
        return lines


def _retry_after(exc: FunctionError) -> float:
    """Seconds a rate-limited chunk waits: Connvo's `metadata.retryAfterSeconds`, else what the
    error says in other forms, capped at one window."""
    seconds = exc.metadata.get("retryAfterSeconds")
    if not isinstance(seconds, int | float):
        millis = exc.data.get("retryAfterMs")
        seconds = millis / 1000 if isinstance(millis, int | float) else DEFAULT_RATE_LIMIT_WAIT_S
    return min(RATE_WINDOW_S, max(0.05, float(seconds)))
