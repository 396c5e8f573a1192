"""The caller's audio as a LiveKit ``AudioInput``: ``rtc.AudioFrame`` s from ``Session.audio()``."""

from __future__ import annotations

import asyncio
import contextlib

from livekit import rtc
from livekit.agents.voice import io

from ...app import Session
from ...audio.pcm import PcmFrame
from .frames import pcm_frame

#: Default gap (ms) in the caller's audio after which silence is fed in its place.
DEFAULT_SILENCE_AFTER_MS = 100
#: Frames read ahead from the session; beyond that the session's own bound applies.
READ_AHEAD_FRAMES = 2


class SessionAudioInput(io.AudioInput):
    """Feeds an ``AgentSession`` the caller's audio: mono frames at ``session.sample_rate``.

    LiveKit's voice pipeline expects a continuous track, as a WebRTC one is: its VAD only
    notices the end of speech by hearing silence. A quicvoice uplink has gaps instead (a
    realtime uplink yields nothing while the caller's jitter buffer is empty, a reliable one
    ends after the caller's last frame), so after ``silence_after_ms`` without audio this
    input yields silent frames, one frame period of real time apart, until audio resumes;
    ``None`` turns that off. It ends when the session does (:meth:`session_ended`).
    """

    def __init__(
        self,
        session: Session,
        *,
        silence_after_ms: int | None = DEFAULT_SILENCE_AFTER_MS,
        label: str = "quicvoice",
    ) -> None:
        super().__init__(label=label)
        if silence_after_ms is not None and (
            isinstance(silence_after_ms, bool)
            or not isinstance(silence_after_ms, int)
            or silence_after_ms < 0
        ):
            raise ValueError(
                f"silence_after_ms must be an int >= 0 or None, not {silence_after_ms!r}"
            )
        self._session = session
        self._rate = session.sample_rate
        self._period = session.frame_ms / 1000
        self._silence = bytes(2 * self._rate * session.frame_ms // 1000)
        self._silence_after = None if silence_after_ms is None else silence_after_ms / 1000
        self._frames: asyncio.Queue[PcmFrame] = asyncio.Queue(READ_AHEAD_FRAMES)
        self._reader: asyncio.Task[None] | None = None
        self._reading_done = False
        self._wake = asyncio.Event()
        self._silence_due: float | None = None
        #: Real frames and silent frames yielded so far.
        self.frames_yielded = 0
        self.silent_frames_yielded = 0

    @property
    def sample_rate(self) -> int:
        """The rate of every frame this input yields, in Hz (the session's)."""
        return self._rate

    async def __anext__(self) -> rtc.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._reader is None:
            self._reader = loop.create_task(self._read())
        while True:
            if not self._frames.empty():
                frame = self._frames.get_nowait()
                self._silence_due = None
                self.frames_yielded += 1
                return pcm_frame(frame.data, self._rate)
            if self._session.closed and self._reading_done:
                raise StopAsyncIteration
            timeout: float | None = None
            if self._silence_after is not None:
                if self._silence_due is None:
                    self._silence_due = loop.time() + self._silence_after
                timeout = self._silence_due - loop.time()
            if timeout is None or timeout > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                    continue
                except TimeoutError:
                    pass
            if self._session.closed:
                raise StopAsyncIteration
            assert self._silence_due is not None
            self._silence_due += self._period
            self.silent_frames_yielded += 1
            return pcm_frame(self._silence, self._rate)

    def session_ended(self) -> None:
        """The session closed: end the input once what was heard has been yielded."""
        self._wake.set()

    async def aclose(self) -> None:
        """Stop reading the session (the ``AgentSession`` is done with this input)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def _read(self) -> None:
        try:
            async for frame in self._session.audio():
                await self._frames.put(frame)
                self._wake.set()
        finally:
            self._reading_done = True
            self._wake.set()
