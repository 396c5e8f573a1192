"""A LiveKit Agents voice agent served by quicvoice, with no LiveKit server and no cloud model.

    pip install 'quicvoice[livekit]'
    quicvoice serve --listen 127.0.0.1:4433 --app examples.livekit_agent:app
    quicvoice call 127.0.0.1:4433 --json           # or any quicvoice client

Every call runs a real ``livekit.agents.AgentSession`` (its turn-taking, interruptions,
chat context, transcripts) over the quicvoice session: ``quicvoice.integrations.livekit``
gives it the caller's audio as an ``AudioInput`` and plays its speech as quicvoice turns
through an ``AudioOutput``. What would normally be cloud services are stand-ins made from
LiveKit's own base classes, so the example runs anywhere:

* ``EnergyVAD`` (``vad.VAD``): speech is audio louder than -40 dBFS for 100 ms; it ends
  after 400 ms below.
* ``ToneSTT`` (``stt.STT``, batch; LiveKit's stream adapter runs it per VAD utterance):
  "transcribes" an utterance as its length and its loudest frequency, e.g.
  ``"a 440 hertz sound for 1.2 seconds"``; a real STT would give the words.
* ``ScriptedLLM`` (``llm.LLM``): answers from the chat context, so it shows that the
  agent remembers: ``"You made a 440 hertz sound. That was your turn 2."``.
* ``BeepTTS`` (``tts.TTS``, 24 kHz): says a reply as a 660 Hz tone, 60 ms per character
  with a short gap between words; LiveKit resamples it to the call's rate.

Replace them with real plugins (``livekit-plugins-deepgram``, ``-openai``, ``-cartesia``,
``-silero``...) and the rest stays as it is. The conversation reaches the caller as
``livekit.conversation_item`` events (role, text, interrupted).
"""

from __future__ import annotations

import asyncio
import uuid

import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    Agent,
    AgentSession,
    APIConnectOptions,
    llm,
    stt,
    tts,
    utils,
    vad,
)
from livekit.agents.types import NOT_GIVEN, NotGivenOr

from quicvoice.integrations.livekit import AgentCall, agent_app

#: Level above which a frame counts as speech, in dBFS.
SPEECH_DBFS = -40.0
#: Speech must last this long to start an utterance, and silence this long to end it (s).
MIN_SPEECH = 0.1
MIN_SILENCE = 0.4
#: The stand-in voice: a tone, this long per character of the reply.
VOICE_HZ = 660.0
VOICE_RATE = 24000
SECONDS_PER_CHAR = 0.06
#: Amplitude of the stand-in voice (half of full scale).
VOICE_LEVEL = 0.5


# -- VAD -------------------------------------------------------------------------------


class EnergyVAD(vad.VAD):
    """A voice activity detector by level: speech is audio above ``SPEECH_DBFS``."""

    def __init__(self) -> None:
        super().__init__(capabilities=vad.VADCapabilities(update_interval=0.02))

    def stream(self) -> vad.VADStream:
        return _EnergyVADStream(self)


def _dbfs(samples: np.ndarray) -> float:
    if not len(samples):
        return -120.0
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    return 20.0 * np.log10(max(rms, 1e-3) / 32768.0)


class _EnergyVADStream(vad.VADStream):
    async def _main_task(self) -> None:
        speaking = False
        speech = silence = 0.0  # seconds of each, accumulated
        utterance: list[rtc.AudioFrame] = []
        sample_index = 0
        async for item in self._input_ch:
            if not isinstance(item, rtc.AudioFrame):  # a flush: start afresh
                speaking, speech, silence, utterance = False, 0.0, 0.0, []
                continue
            samples = np.frombuffer(item.data, dtype=np.int16)
            loud = _dbfs(samples) > SPEECH_DBFS
            sample_index += item.samples_per_channel
            if loud:
                speech += item.duration
                silence = 0.0
            else:
                silence += item.duration
                if not speaking:
                    speech = 0.0
            if speaking or loud:
                utterance.append(item)
            elif utterance:
                utterance = []
            if not speaking and speech >= MIN_SPEECH:
                speaking = True
                self._send(vad.VADEventType.START_OF_SPEECH, sample_index, speech, 0.0, utterance)
            self._send(
                vad.VADEventType.INFERENCE_DONE,
                sample_index,
                speech if speaking else 0.0,
                silence,
                [item],
                speaking=speaking,
                loud=loud,
            )
            if speaking and silence >= MIN_SILENCE:
                self._send(vad.VADEventType.END_OF_SPEECH, sample_index, speech, silence, utterance)
                speaking, speech, utterance = False, 0.0, []

    def _send(
        self,
        kind: vad.VADEventType,
        sample_index: int,
        speech: float,
        silence: float,
        frames: list[rtc.AudioFrame],
        *,
        speaking: bool = False,
        loud: bool = False,
    ) -> None:
        self._event_ch.send_nowait(
            vad.VADEvent(
                type=kind,
                samples_index=sample_index,
                timestamp=asyncio.get_running_loop().time(),
                speech_duration=speech,
                silence_duration=silence,
                frames=list(frames),
                probability=1.0 if loud else 0.0,
                speaking=speaking or kind is vad.VADEventType.START_OF_SPEECH,
                raw_accumulated_speech=speech,
                raw_accumulated_silence=silence,
            )
        )


# -- STT -------------------------------------------------------------------------------


class ToneSTT(stt.STT):
    """Describes an utterance by its length and loudest frequency (a batch STT)."""

    def __init__(self) -> None:
        super().__init__(capabilities=stt.STTCapabilities(streaming=False, interim_results=False))
        #: The sample rates of every utterance heard (the call's rate, if all is well).
        self.rates_heard: list[int] = []

    async def _recognize_impl(
        self,
        buffer: utils.AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.SpeechEvent:
        frame = utils.merge_frames(buffer)
        self.rates_heard.append(frame.sample_rate)
        samples = np.frombuffer(frame.data, dtype=np.int16).astype(np.float64)
        text = ""
        if len(samples) and frame.sample_rate:
            spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
            bins = np.fft.rfftfreq(len(samples), 1.0 / frame.sample_rate)
            peak = float(bins[np.argmax(spectrum)])
            text = f"a {round(peak)} hertz sound for {frame.duration:.1f} seconds"
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=uuid.uuid4().hex,
            alternatives=[stt.SpeechData(language="en", text=text, confidence=1.0)],
        )


# -- LLM -------------------------------------------------------------------------------


class ScriptedLLM(llm.LLM):
    """Answers from the chat context: what the caller said last and how many turns so far."""

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        **_: object,
    ) -> llm.LLMStream:
        return _ScriptedStream(
            self, chat_ctx=chat_ctx, tools=tools or [], conn_options=conn_options
        )


def reply_to(chat_ctx: llm.ChatContext) -> str:
    """The stand-in LLM's answer to ``chat_ctx``."""
    said = [
        item.text_content or ""
        for item in chat_ctx.items
        if isinstance(item, llm.ChatMessage) and item.role == "user"
    ]
    if not said:
        return "Hello. Make a sound and I will tell you what I heard."
    heard = said[-1].removeprefix("a ").split(" for ")[0]
    return f"You made a {heard}. That was your turn {len(said)}."


class _ScriptedStream(llm.LLMStream):
    async def _run(self) -> None:
        request = uuid.uuid4().hex
        for index, word in enumerate(reply_to(self._chat_ctx).split(" ")):
            delta = llm.ChoiceDelta(role="assistant", content=(" " if index else "") + word)
            self._event_ch.send_nowait(llm.ChatChunk(id=request, delta=delta))
            await asyncio.sleep(0)  # a token at a time, as a network LLM streams


# -- TTS -------------------------------------------------------------------------------


class BeepTTS(tts.TTS):
    """Says text as a ``VOICE_HZ`` tone at 24 kHz, ``SECONDS_PER_CHAR`` per character."""

    def __init__(self) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=VOICE_RATE,
            num_channels=1,
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return _BeepStream(tts=self, input_text=text, conn_options=conn_options)


def beep_pcm(text: str) -> bytes:
    """The stand-in voice for ``text``: s16le at ``VOICE_RATE``, mono."""
    chunks = []
    for word in text.split():
        n = int(VOICE_RATE * SECONDS_PER_CHAR * len(word))
        t = np.arange(n) / VOICE_RATE
        chunks.append(VOICE_LEVEL * 32767 * np.sin(2 * np.pi * VOICE_HZ * t))
        chunks.append(np.zeros(int(VOICE_RATE * SECONDS_PER_CHAR)))  # the space
    if not chunks:
        return b""
    return np.concatenate(chunks).astype("<i2").tobytes()


class _BeepStream(tts.ChunkedStream):
    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(
            request_id=uuid.uuid4().hex,
            sample_rate=VOICE_RATE,
            num_channels=1,
            mime_type="audio/pcm",
        )
        pcm = beep_pcm(self._input_text)
        step = VOICE_RATE // 10 * 2  # 100 ms a push, as a network TTS would deliver it
        for offset in range(0, len(pcm), step):
            output_emitter.push(pcm[offset : offset + step])
            await asyncio.sleep(0)
        output_emitter.flush()


# -- the agent -------------------------------------------------------------------------


class Assistant(Agent):
    """Greets the caller, then answers every utterance (the stand-in LLM decides what)."""

    def __init__(self, *, greet: bool = True) -> None:
        super().__init__(instructions="You are a helpful voice assistant.")
        self._greet = greet

    async def on_enter(self) -> None:
        if self._greet:
            self.session.generate_reply()


def build_session() -> AgentSession:
    """An ``AgentSession`` with the stand-ins; interruptions by voice activity only."""
    return AgentSession(
        vad=EnergyVAD(),
        stt=ToneSTT(),
        llm=ScriptedLLM(),
        tts=BeepTTS(),
        # LiveKit ignores barge-ins for the first 3 s of agent speech by default, in case the
        # caller's device echoes the agent back before its echo canceller has converged; a
        # quicvoice client plays and captures through the platform's voice-processing I/O.
        aec_warmup_duration=None,
        turn_handling={
            "turn_detection": "vad",
            "interruption": {"mode": "vad", "resume_false_interruption": False},
        },
    )


async def entry(call: AgentCall) -> None:
    """Run one call: an ``AgentSession`` with the stand-ins over the quicvoice session."""
    await call.start(build_session(), Assistant())


app = agent_app(entry, sample_rate=16000)
