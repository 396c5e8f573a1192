"""The accept hook: what an application sees of a call before it starts, and its answer.

``VoiceServer(config, handler, accept=hook)`` calls ``hook(request)`` once per session (new or
resumed) after the caller's credential verified and before ``welcome``. The hook is a plain
function or a coroutine function:

    returns / raises                       the call
    None or True                           is accepted
    False                                  is refused with REFUSED
    returns or raises Refuse(code, reason)  is refused with that code and reason; a code that
                                           is neither REFUSED nor in APPLICATION_REFUSAL_CODES
                                           (0x1000..0x1FFF) becomes REFUSED, and is logged
    raises anything else, returns another  is refused with INTERNAL_ERROR; the traceback (or
      value                                the value's type) is logged
    takes longer than accept_timeout       is refused with INTERNAL_ERROR (logged)

This module is the pure part (the request, the refusal, reading the answer); the asyncio shell
runs the hook (``quicvoice.asyncio.accept``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import QuicVoiceError
from ..session.codes import APPLICATION_REFUSAL_CODES, ErrorCode
from .caller import Caller

#: Longest reason sent for an application's refusal, in characters (longer ones are cut).
MAX_REASON_LEN = 256


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRequest:
    """A call asking to start (or resume) a session, as the accept hook sees it."""

    #: The verified caller; ``None`` when the server checks no credentials or none was needed.
    caller: Caller | None
    #: The ``hello``'s metadata (bounded: at most 32 keys of 64 characters, values of 1024).
    metadata: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    #: The client's address as the server sees it (the real client, behind a forwarder too).
    peer_address: tuple[str, int] | None = None
    #: Whether the call resumes an earlier session (with a resume token).
    resumed: bool = False
    #: The session's ID (the resumed one's, or the one a new session will get).
    session_id: str
    #: The negotiated codec, ``"NAME/RATE"``.
    codec: str
    #: Whether the call came over WebTransport (HTTP/3) rather than raw QUIC.
    webtransport: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))


class Refuse(QuicVoiceError):
    """An accept hook's refusal: raise it or return it.

    ``code`` should be ``ErrorCode.REFUSED`` (the default) or one of
    ``APPLICATION_REFUSAL_CODES`` (0x1000..0x1FFF, the application's own); ``reason`` is sent
    to the client, so it must not hold secrets.
    """

    def __init__(self, *, code: int = ErrorCode.REFUSED, reason: str = "refused") -> None:
        super().__init__(f"{reason} (code {int(code):#x})")
        #: The code sent to the client.
        self.code = int(code)
        #: The reason sent to the client.
        self.reason = str(reason)


#: An accept hook: sync or async; see the module docstring for what it may answer.
AcceptHook = Callable[[CallRequest], "Awaitable[bool | Refuse | None] | bool | Refuse | None"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HookDecision:
    """What an accept hook's answer means for the call."""

    #: ``None``: accepted; else the code to refuse with.
    refusal_code: int | None
    #: The reason sent with the refusal (empty when accepted).
    reason: str = ""
    #: Something the server's log should say about the hook's answer (a misuse), or empty.
    problem: str = ""

    @property
    def accepted(self) -> bool:
        """Whether the call may start."""
        return self.refusal_code is None


ACCEPTED = HookDecision(refusal_code=None)


def is_refusal_code(code: int) -> bool:
    """Whether an application may refuse with ``code`` (REFUSED or 0x1000..0x1FFF)."""
    return code == ErrorCode.REFUSED or code in APPLICATION_REFUSAL_CODES


def decide(answer: object) -> HookDecision:
    """Read an accept hook's answer (returned, or a ``Refuse`` it raised)."""
    if answer is None or answer is True:
        return ACCEPTED
    if answer is False:
        return HookDecision(refusal_code=ErrorCode.REFUSED, reason="refused")
    if isinstance(answer, Refuse):
        reason = answer.reason[:MAX_REASON_LEN]
        if is_refusal_code(answer.code):
            return HookDecision(refusal_code=answer.code, reason=reason)
        return HookDecision(
            refusal_code=ErrorCode.REFUSED,
            reason=reason,
            problem=f"the accept hook refused with code {answer.code:#x}, which is not "
            "REFUSED or in 0x1000..0x1FFF: sent REFUSED instead",
        )
    return HookDecision(
        refusal_code=ErrorCode.INTERNAL_ERROR,
        reason="the server application failed",
        problem=f"the accept hook returned a {type(answer).__name__}, not None, a bool or "
        "Refuse: refused with INTERNAL_ERROR",
    )
