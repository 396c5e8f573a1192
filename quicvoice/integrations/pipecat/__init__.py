"""Pipecat pipelines over quicvoice sessions: ``pip install 'quicvoice[pipecat]'``.

A server-side Pipecat transport (:class:`QuicVoiceTransport`) over one
:class:`quicvoice.Session`, a checkpoint of the conversation that a pipeline on another
backend resumes from (:class:`ContextCheckpoint`), and a runner for ``quicvoice serve
--app`` (:func:`pipeline_app`)::

    from quicvoice.integrations.pipecat import ContextCheckpoint, pipeline_app

    def build(transport, session):
        context = LLMContext([{"role": "system", "content": "..."}])
        transport.observers.append(ContextCheckpoint(session, context))
        return Pipeline([transport.input(), ..., transport.output(), ...])

    app = pipeline_app(build)

Design, events and the state-size strategies: ``specs/integrations.md``.
"""

from __future__ import annotations

try:
    import pipecat  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"quicvoice.integrations.pipecat needs Pipecat: pip install 'quicvoice[pipecat]' ({error})",
        name=error.name,
    ) from error

from .checkpoint import (
    STATE_KEY,
    ContextCheckpoint,
    ContextTooLargeError,
    OffloadHook,
    OverLimit,
)
from .pcm import AudioFormatError, PcmConverter
from .runner import Build, pipeline_app, run_until_either_ends
from .transport import (
    QuicVoiceInputTransport,
    QuicVoiceOutputTransport,
    QuicVoiceParams,
    QuicVoiceTransport,
    TurnPlayedFrame,
)

__all__ = [
    "STATE_KEY",
    "AudioFormatError",
    "Build",
    "ContextCheckpoint",
    "ContextTooLargeError",
    "OffloadHook",
    "OverLimit",
    "PcmConverter",
    "QuicVoiceInputTransport",
    "QuicVoiceOutputTransport",
    "QuicVoiceParams",
    "QuicVoiceTransport",
    "TurnPlayedFrame",
    "pipeline_app",
    "run_until_either_ends",
]
