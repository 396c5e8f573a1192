"""The conversation, checkpointed into the session's state so another backend can continue it.

A :class:`ContextCheckpoint` keeps a Pipecat ``LLMContext``'s messages and a dict of app
state the pipeline declares in ``session.state["pipecat"]``, saves them whenever the
conversation moved on (a user or bot turn ended, the context was pushed to the LLM), and
restores them when the session was resumed on a new backend. It is a Pipecat observer:
the runner (:func:`~quicvoice.integrations.pipecat.pipeline_app`) adds it to the worker.

The session store holds at most ``MAX_STATE_LEN`` (256 KiB) of packed state. A conversation
that outgrows it is never cut silently: by default :meth:`ContextCheckpoint.save` raises
:class:`ContextTooLargeError` (the previous checkpoint stays in the store); with
``over_limit="trim"`` the oldest messages after the first ``keep_first`` are left out of
the checkpoint (logged, counted, and recorded in it as ``trimmed``); or ``over_limit`` is
a hook that offloads messages elsewhere and returns the shorter list to store.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import msgpack
from pipecat.frames.frames import (
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    LLMContextAssistantTimestampFrame,
    LLMContextFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.processors.aggregators.llm_context import LLMContext, LLMSpecificMessage

from ...app import Session
from ...errors import StoreError
from ...store.base import MAX_STATE_LEN

logger = logging.getLogger("quicvoice.integrations.pipecat")

#: The key of ``session.state`` this module owns.
STATE_KEY = "pipecat"
#: The layout of what is stored under it.
STATE_VERSION = 1
#: Frames after which the conversation may have moved on.
_MILESTONES = (
    LLMContextFrame,
    LLMContextAssistantTimestampFrame,
    BotStoppedSpeakingFrame,
    UserStoppedSpeakingFrame,
    EndFrame,
    CancelFrame,
)
#: Marks an LLM-specific message in the stored list.
_SPECIFIC = "__llm_specific__"
#: Octets of slack for msgpack's array header when sizing a trimmed list.
_HEADER_SLACK = 16

Message = Any
OffloadHook = Callable[[list[Message], int], list[Message]]
"""``hook(messages, limit) -> messages``: store old messages elsewhere, return what to keep."""
OverLimit = Literal["error", "trim"] | OffloadHook


class ContextTooLargeError(StoreError):
    """The conversation's checkpoint does not fit the session store's state limit."""


class ContextCheckpoint(BaseObserver):
    """Keeps ``context`` (and ``app_state``) in ``session.state`` and restores it on resume."""

    def __init__(
        self,
        session: Session,
        context: LLMContext,
        *,
        app_state: MutableMapping[str, Any] | None = None,
        over_limit: OverLimit = "error",
        keep_first: int = 1,
        limit: int = MAX_STATE_LEN,
    ) -> None:
        """Restore what ``session.state`` holds (a resumed session), then follow the pipeline.

        ``app_state`` is a dict of your own (msgpack values) saved with the messages and
        updated in place on restore. ``keep_first`` messages (the system prompt) are never
        trimmed. ``limit`` is the store's limit on the whole packed state.
        """
        super().__init__()
        if not (over_limit in ("error", "trim") or callable(over_limit)):
            raise ValueError(f"over_limit must be 'error', 'trim' or a hook, not {over_limit!r}")
        if isinstance(keep_first, bool) or not isinstance(keep_first, int) or keep_first < 0:
            raise ValueError(f"keep_first must be a non-negative int, not {keep_first!r}")
        self.session = session
        self.context = context
        self.app_state: MutableMapping[str, Any] = app_state if app_state is not None else {}
        self._over_limit = over_limit
        self._keep_first = keep_first
        self._limit = limit
        self._last: bytes | None = None
        self._seen: deque[int] = deque(maxlen=64)
        #: Messages left out of checkpoints so far (``over_limit="trim"``).
        self.trimmed_messages = 0
        #: Checkpoints written to the session.
        self.saves = 0
        #: True when this pipeline started from a restored conversation.
        self.restored = self._restore()

    def save(self) -> int:
        """Checkpoint now if anything changed; return the packed size of the state, octets.

        Raises :class:`ContextTooLargeError` when it cannot fit (``over_limit="error"``,
        or a hook that returned too much); the store keeps the previous checkpoint.
        """
        messages = [_encode(m) for m in self.context.get_messages()]
        entry: dict[str, Any] = {
            "v": STATE_VERSION,
            "messages": messages,
            "app": dict(self.app_state),
            "trimmed": 0,
        }
        blob = self._pack(entry)
        if len(blob) > self._limit:
            blob = self._fit(entry, len(blob))
        if blob != self._last:
            self.session.state[STATE_KEY] = entry
            self.session.save()
            self._last = blob
            self.saves += 1
        return len(blob)

    async def on_push_frame(self, data: FramePushed) -> None:
        """After each conversational milestone, checkpoint (errors are logged, not raised)."""
        frame = data.frame
        if not isinstance(frame, _MILESTONES) or frame.id in self._seen:
            return
        self._seen.append(frame.id)
        try:
            self.save()
        except StoreError as error:
            logger.error("session %s: conversation not checkpointed: %s", self.session.id, error)

    def _pack(self, entry: dict[str, Any]) -> bytes:
        state = {**self.session.state, STATE_KEY: entry}
        try:
            blob: bytes = msgpack.packb(state, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as error:
            raise StoreError(f"the conversation cannot be encoded as msgpack: {error}") from None
        return blob

    def _fit(self, entry: dict[str, Any], size: int) -> bytes:
        messages: list[Message] = entry["messages"]
        if self._over_limit == "error":
            raise ContextTooLargeError(
                f"the checkpoint of {len(messages)} messages packs to {size} octets, over the "
                f"session store's {self._limit}; the previous checkpoint stays. Choose a "
                "strategy: ContextCheckpoint(..., over_limit='trim') keeps the newest messages "
                "that fit, or over_limit=hook offloads old ones (specs/integrations.md)"
            )
        if self._over_limit == "trim":
            kept = self._trim(messages, size - self._limit)
        else:
            assert callable(self._over_limit)
            kept = [
                _encode(m) for m in self._over_limit(list(self.context.get_messages()), self._limit)
            ]
        entry["messages"] = kept
        entry["trimmed"] = max(0, len(messages) - len(kept))
        blob = self._pack(entry)
        if len(blob) > self._limit:
            raise ContextTooLargeError(
                f"the checkpoint still packs to {len(blob)} octets after "
                f"{'trimming' if self._over_limit == 'trim' else 'the offload hook'}, over the "
                f"session store's {self._limit} (the first {self._keep_first} messages and the "
                "app state alone are too large?)"
            )
        if entry["trimmed"]:
            self.trimmed_messages = entry["trimmed"]
            logger.warning(
                "session %s: the checkpoint leaves out the %d oldest messages to fit %d octets",
                self.session.id,
                entry["trimmed"],
                self._limit,
            )
        return blob

    def _trim(self, messages: list[Message], excess: int) -> list[Message]:
        """Drop the oldest messages after ``keep_first`` until ``excess`` octets are gone."""
        head, tail = messages[: self._keep_first], messages[self._keep_first :]
        sizes = [len(msgpack.packb(m, use_bin_type=True)) for m in tail]
        drop, freed = 0, 0
        while drop < len(tail) and freed < excess + _HEADER_SLACK:
            freed += sizes[drop]
            drop += 1
        # A tool result must not open the stored list without the call it answers.
        while (
            drop < len(tail) and isinstance(tail[drop], dict) and tail[drop].get("role") == "tool"
        ):
            drop += 1
        return head + tail[drop:]

    def _restore(self) -> bool:
        if not self.session.resumed:
            return False
        entry = self.session.state.get(STATE_KEY)
        if entry is None:
            return False
        problem = _check_entry(entry)
        if problem is not None:
            logger.error(
                "session %s: the checkpointed conversation is unusable (%s); starting afresh",
                self.session.id,
                problem,
            )
            return False
        self.context.set_messages([_decode(m) for m in entry["messages"]])
        self.app_state.clear()
        self.app_state.update(entry["app"])
        self.trimmed_messages = int(entry.get("trimmed", 0))
        self._last = self._pack(entry)
        return True


def _check_entry(entry: object) -> str | None:
    """Why a stored entry cannot be restored, or ``None``."""
    if not isinstance(entry, dict):
        return f"not a map but {type(entry).__name__}"
    if entry.get("v") != STATE_VERSION:
        return f"layout version {entry.get('v')!r}, expected {STATE_VERSION}"
    if not isinstance(entry.get("messages"), list):
        return "no message list"
    if not isinstance(entry.get("app"), dict):
        return "no app state map"
    if not all(isinstance(m, dict) for m in entry["messages"]):
        return "a message that is not a map"
    return None


def _encode(message: Message) -> Message:
    if isinstance(message, LLMSpecificMessage):
        return {_SPECIFIC: message.llm, "message": message.message}
    return message


def _decode(message: dict[str, Any]) -> Message:
    if _SPECIFIC in message:
        return LLMSpecificMessage(llm=message[_SPECIFIC], message=message.get("message"))
    return message
