"""Pipecat echo: each utterance a participant says comes back from the bot once they stop.

    pip install 'connvo-agent[pipecat]'
    CONNVO_URL=https://... CONNVO_TOKEN=... CONNVO_MEETING=... python examples/pipecat_echo.py

The pipeline: transport.input() -> Silero VAD -> UtteranceEcho -> transport.output(). The VAD marks
where an utterance starts and stops; the echo keeps the audio in between and sends it back when
it stops. Speaking again over an echo interrupts it. Nothing is downloaded: Silero's model ships
in the pipecat-ai wheel. Meant for one person testing the bot; docs/pipecat.md shows where a
speech-to-text, an LLM and a text-to-speech service go instead of the echo.
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Sequence
from typing import Any

from loguru import logger
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    Frame,
    InputAudioRawFrame,
    SpeechOutputAudioRawFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from agent.integrations.pipecat import ConnvoTransport

# Silero VAD takes 16 kHz (or 8 kHz) audio; the meeting itself plays 48 kHz, so the output at
# that rate is converted once, by Pipecat.
IN_RATE = 16_000
OUT_RATE = 48_000


class UtteranceEcho(FrameProcessor):
    """Keeps the user's audio from the VAD's start to its stop and sends it back, once.

    The VAD confirms speech `start_secs` after it began and its end `stop_secs` after it ended:
    the echo keeps `pre_roll_secs` of audio from before the start and leaves the trailing silence
    out. A new utterance interrupts the echo still playing (barge-in). The user's audio stops here.
    """

    def __init__(
        self, *, pre_roll_secs: float = 0.5, max_secs: float = 30.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._pre_roll_secs = pre_roll_secs
        self._max_secs = max_secs
        self._held: collections.deque[InputAudioRawFrame] = collections.deque()
        self._held_secs = 0.0
        self._speaking = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            self._hold(frame)
            return
        await self.push_frame(frame, direction)
        if isinstance(frame, VADUserStartedSpeakingFrame):
            self._speaking = True
            await self.broadcast_interruption()  # type: ignore[no-untyped-call]
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self._speaking = False
            echo = self._utterance(frame.stop_secs)
            if echo is not None:
                await self.push_frame(echo)

    def _hold(self, frame: InputAudioRawFrame) -> None:
        self._held.append(frame)
        self._held_secs += frame.num_frames / frame.sample_rate
        limit = self._max_secs if self._speaking else self._pre_roll_secs
        while self._held and self._held_secs > limit:
            dropped = self._held.popleft()
            self._held_secs -= dropped.num_frames / dropped.sample_rate

    def _utterance(self, stop_secs: float) -> SpeechOutputAudioRawFrame | None:
        """The audio held, less the trailing silence that confirmed the stop."""
        if not self._held:
            return None
        first = self._held[0]
        pcm = b"".join(f.audio for f in self._held)
        self._held.clear()
        self._held_secs = 0.0
        bytes_per_sec = first.sample_rate * first.num_channels * 2
        frame_bytes = first.num_channels * 2
        keep = len(pcm) - int(max(0.0, stop_secs - 0.1) * bytes_per_sec)
        keep -= keep % frame_bytes
        if keep <= 0:
            return None
        return SpeechOutputAudioRawFrame(
            audio=pcm[:keep], sample_rate=first.sample_rate, num_channels=first.num_channels
        )


async def main(*, observers: Sequence[BaseObserver] = (), **options: Any) -> None:
    """Run until the meeting ends; `options` are join()'s (settings keys), `observers` watch
    the pipeline's frames (Pipecat observers)."""
    transport = ConnvoTransport(**options)
    vad = VADProcessor(vad_analyzer=SileroVADAnalyzer(params=VADParams(stop_secs=0.5)))
    pipeline = Pipeline([transport.input(), vad, UtteranceEcho(), transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=IN_RATE, audio_out_sample_rate=OUT_RATE),
        enable_rtvi=False,  # no RTVI client in a Connvo meeting
        idle_timeout_secs=None,  # run until the meeting ends, however quiet
        observers=list(observers),
    )

    async def joined(transport: ConnvoTransport, user_id: str) -> None:
        logger.info(f"{user_id} joined")

    async def left(transport: ConnvoTransport, user_id: str, reason: str) -> None:
        logger.info(f"{user_id} left: {reason}")

    transport.add_event_handler("on_participant_joined", joined)
    transport.add_event_handler("on_participant_left", left)

    runner = WorkerRunner(handle_sigint=False)  # Ctrl-C cancels main, which cancels the pipeline
    await runner.add_workers(worker)
    await runner.run()  # returns when the pipeline ends: the transport ends it with the meeting


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="INFO")
    asyncio.run(main())
