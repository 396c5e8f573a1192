"""The quicvoice error tree: every error raised on purpose derives from ``QuicVoiceError``."""

from __future__ import annotations


class QuicVoiceError(Exception):
    """Base class of every error quicvoice raises on purpose."""


class ProtocolError(QuicVoiceError):
    """The peer broke the voice protocol; the session is closed with ``error_code``."""

    def __init__(self, message: str, error_code: int = 0x100) -> None:
        super().__init__(message)
        #: The application error code sent to the peer when the session closes.
        self.error_code = error_code


class InvalidStateError(QuicVoiceError, RuntimeError):
    """Local misuse: the session, connection or endpoint is not in a state that allows the call
    (audio before the session is up, a turn on a client, an endpoint not started)."""


class ConfigurationError(QuicVoiceError, ValueError):
    """A configuration value, file or command-line argument is invalid; the message names it."""


class CodecError(QuicVoiceError, ValueError):
    """Audio or connection-ID data could not be encoded or decoded."""


class StoreError(QuicVoiceError):
    """The session store failed or returned data that cannot be trusted."""


class NonceExhaustedError(QuicVoiceError):
    """A connection-ID generator used every nonce of its configuration; rotate to a new one."""


class SessionRefusedError(QuicVoiceError, ConnectionError):
    """The connection closed before the server welcomed the session.

    ``error_code`` says why: ``RESUME_REFUSED`` (0x109) or ``UNSUPPORTED`` (0x107) are the
    server's deliberate refusals; any other code (a transport error, a bare
    ``APPLICATION_ERROR``) is a connection that failed on the way.
    """

    def __init__(self, error_code: int, reason: str) -> None:
        super().__init__(f"session refused: {reason or 'no reason given'} (code {error_code:#x})")
        #: The close's error code (application or transport).
        self.error_code = error_code
        #: The close's reason phrase.
        self.reason = reason


class InvalidURLError(QuicVoiceError, ValueError):
    """A URL given to ``connect`` (or ``quicvoice call``) is not one a client can dial.

    The message names what is wrong: the scheme, a missing host, the port, userinfo, ...
    """


class NameResolutionError(QuicVoiceError, ConnectionError):
    """The server's host name did not resolve to any address the client can use."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"cannot resolve {host!r}: {reason}")
        #: The name that did not resolve.
        self.host = host
        #: Why, as the resolver said it.
        self.reason = reason


class CertificateVerificationError(QuicVoiceError, ConnectionError):
    """The server's certificate failed a check; no hello or audio was sent to it.

    ``check`` names the check that failed: ``"hash"`` (certificate-hash pinning), ``"validity"``
    (not yet or no longer valid), ``"name"`` (the host is not among the certificate's names),
    ``"trust"`` (no chain to a trusted certificate authority) or ``"format"`` (unreadable).
    """

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"server certificate rejected ({check} check): {message}")
        #: Which check failed (see the class docstring).
        self.check = check


class ConnectFailedError(QuicVoiceError, ConnectionError):
    """Every address of the server was tried and none gave a voice session; the message lists
    each address and why."""


class ConnectTimeoutError(QuicVoiceError, ConnectionError, TimeoutError):
    """No voice session was up within ``connect``'s timeout."""


class CallEndedError(QuicVoiceError, ConnectionError):
    """The call has ended (the app closed it, the peer closed it, or no resume succeeded):
    nothing more can be sent on it, and nothing more will arrive."""


class CallReconnectingError(QuicVoiceError, ConnectionError):
    """The call is reconnecting and cannot do this now (it has no socket yet, or it holds as
    many app events for the next connection as it may)."""


class MigrationError(QuicVoiceError, ConnectionError):
    """``migrate()`` did not complete: no socket on the new address, no answer on the new
    path in time, or the call could not be resumed from there."""


class UplinkEndedError(QuicVoiceError):
    """Audio was sent after ``end_audio()`` or ``bye()`` finished the reliable uplink."""


class CarrierProtocolError(QuicVoiceError):
    """A telephony carrier's media-stream message broke its protocol (``quicvoice.gateway``):
    malformed, out of order, oversized, or carrying audio that does not decode. The gateway
    closes that one stream; the message says what was wrong, never what was sent."""
