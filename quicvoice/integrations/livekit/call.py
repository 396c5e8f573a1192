"""Serving LiveKit agents: ``agent_app(entry)`` runs ``entry(call)`` for every quicvoice call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from livekit.agents import Agent, AgentSession
from livekit.agents.llm import ChatMessage
from livekit.agents.voice.events import CloseEvent, ConversationItemAddedEvent

from ...app import App, AppEvent, Session, SessionEnded, TurnInterruptedByCaller
from .audio_input import DEFAULT_SILENCE_AFTER_MS, SessionAudioInput
from .audio_output import SessionAudioOutput

logger = logging.getLogger("quicvoice.integrations.livekit")

#: The application event carrying each conversation item to the caller.
CONVERSATION_EVENT = "livekit.conversation_item"
#: Longest text sent in one conversation event, in characters (a control message is
#: bounded; a longer text is cut there and marked ``"truncated": true``).
MAX_EVENT_TEXT = 8000

Entry = Callable[["AgentCall"], Awaitable[None]]
"""What ``agent_app`` runs per call: ``async def entry(call: AgentCall) -> None``."""


class AgentCall:
    """One quicvoice call as a LiveKit agent sees it: the session and LiveKit I/O over it.

    ``entry(call)`` builds an ``AgentSession`` and hands it to :meth:`start`; the call
    then lives until the caller hangs up or the ``AgentSession`` closes, whichever is first.
    """

    def __init__(
        self,
        session: Session,
        *,
        silence_after_ms: int | None = DEFAULT_SILENCE_AFTER_MS,
        send_conversation: bool = True,
    ) -> None:
        #: The quicvoice session (``state``, ``metadata``, ``caller``, ``send_event``...).
        self.session = session
        #: The caller's audio for ``AgentSession.input.audio``.
        self.audio_input = SessionAudioInput(session, silence_after_ms=silence_after_ms)
        #: The agent's speech for ``AgentSession.output.audio``.
        self.audio_output = SessionAudioOutput(session)
        self.audio_output.on_caller_barge_in = self._caller_barged_in
        #: The ``AgentSession`` given to :meth:`start`.
        self.agent_session: AgentSession[Any] | None = None
        #: Called with every session event (``UserEvent``, ``CallerMigrated``...) after the
        #: adapter has acted on it.
        self.on_event: Callable[[AppEvent], None] | None = None
        self._send_conversation = send_conversation
        self._done = asyncio.Event()
        self._events: asyncio.Task[None] | None = None
        #: Caller barge-ins that interrupted the agent.
        self.barge_ins = 0

    async def start(self, agent_session: AgentSession[Any], agent: Agent, **options: Any) -> None:
        """Wire ``agent_session`` to this call's audio and start it with ``agent``.

        ``options`` go to ``AgentSession.start`` (not ``room``: there is no room).
        """
        if self.agent_session is not None:
            raise ValueError("this call already runs an AgentSession")
        if "room" in options:
            raise TypeError("AgentCall.start takes no room: the quicvoice session is the audio")
        self.agent_session = agent_session
        agent_session.input.audio = self.audio_input
        agent_session.output.audio = self.audio_output
        agent_session.on("close", self._agent_session_closed)
        if self._send_conversation:
            agent_session.on("conversation_item_added", self._conversation_item_added)
        await agent_session.start(agent, **options)

    async def wait_done(self) -> None:
        """Wait until the caller hung up or the ``AgentSession`` closed."""
        await self._done.wait()

    async def aclose(self) -> None:
        """Close the ``AgentSession`` (if it runs) and stop reading the session."""
        if self.agent_session is not None:
            await self.agent_session.aclose()
        await self.audio_input.aclose()
        await self.audio_output.aclose()
        if self._events is not None:
            self._events.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._events

    def listen(self) -> None:
        """Start routing the session's events (``agent_app`` does it before ``entry``)."""
        if self._events is None:
            self._events = asyncio.get_running_loop().create_task(self._route_events())

    async def _route_events(self) -> None:
        async for event in self.session.events():
            if isinstance(event, TurnInterruptedByCaller):
                self.audio_output.caller_interrupted(event.turn_id)
            elif isinstance(event, SessionEnded):
                self.audio_input.session_ended()
                self.audio_output.session_ended()
                self._done.set()
            if self.on_event is not None:
                try:
                    self.on_event(event)
                except Exception:
                    logger.exception("session %s: on_event failed", self.session.id)

    def _caller_barged_in(self) -> None:
        agent_session = self.agent_session
        if agent_session is None:
            return
        try:
            done = agent_session.interrupt()
        except RuntimeError as refused:  # not running, or this speech may not be interrupted
            logger.info("session %s: barge-in not taken: %s", self.session.id, refused)
            return
        self.barge_ins += 1
        done.add_done_callback(_retrieve)

    def _agent_session_closed(self, event: CloseEvent) -> None:
        logger.info("session %s: the AgentSession closed (%s)", self.session.id, event.reason)
        self._done.set()

    def _conversation_item_added(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, ChatMessage) or self.session.closed:
            return
        text = item.text_content or ""
        data: dict[str, Any] = {"role": item.role, "text": text[:MAX_EVENT_TEXT]}
        data["interrupted"] = item.interrupted
        if len(text) > MAX_EVENT_TEXT:
            data["truncated"] = True
        self.session.send_event(CONVERSATION_EVENT, data)


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.debug("interrupting the AgentSession failed: %s", future.exception())


def agent_app(
    entry: Entry,
    *,
    sample_rate: int = 16000,
    silence_after_ms: int | None = DEFAULT_SILENCE_AFTER_MS,
    send_conversation: bool = True,
    **app_options: Any,
) -> App:
    """A quicvoice :class:`~quicvoice.App` that runs ``entry(call)`` for every call.

    ``sample_rate`` is the PCM rate of the agent's input and output (LiveKit resamples its
    STT and TTS to and from it); ``app_options`` go to ``App`` (``accept``, the bounds).
    Serve it with ``quicvoice serve --app module:attr``.
    """

    async def handler(session: Session) -> None:
        call = AgentCall(
            session, silence_after_ms=silence_after_ms, send_conversation=send_conversation
        )
        call.listen()
        try:
            await entry(call)
            await call.wait_done()
        finally:
            await call.aclose()

    return App(handler, sample_rate=sample_rate, **app_options)
