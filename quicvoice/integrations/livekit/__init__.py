"""LiveKit Agents over quicvoice: an ``AgentSession`` per call, with no LiveKit server.

Needs the optional extra: ``pip install 'quicvoice[livekit]'``::

    from livekit.agents import Agent, AgentSession
    from quicvoice.integrations.livekit import AgentCall, agent_app

    async def entry(call: AgentCall) -> None:
        session = AgentSession(stt=..., llm=..., tts=..., vad=...)
        await call.start(session, Agent(instructions="You are a helpful voice assistant."))

    app = agent_app(entry, sample_rate=16000)     # quicvoice serve --app module:app

The design is in ``specs/integrations.md``.
"""

try:
    import livekit.agents  # noqa: F401
    import livekit.rtc  # noqa: F401
except ImportError as missing:
    raise ImportError(
        "quicvoice.integrations.livekit needs LiveKit Agents, which is not installed "
        f"({missing}): pip install 'quicvoice[livekit]'"
    ) from missing

from .audio_input import SessionAudioInput
from .audio_output import SessionAudioOutput
from .call import CONVERSATION_EVENT, AgentCall, Entry, agent_app
from .frames import FrameConverter, FrameFormatError

__all__ = [
    "CONVERSATION_EVENT",
    "AgentCall",
    "Entry",
    "FrameConverter",
    "FrameFormatError",
    "SessionAudioInput",
    "SessionAudioOutput",
    "agent_app",
]
