"""The gateway's configuration: where it listens, which voice service it bridges calls to,
how it proves who calls, and its bounds (``quicvoice gateway``; ``specs/gateway.md``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from quicvoice.audio.codecs import DEFAULT_CODECS, CodecSpec, negotiate
from quicvoice.errors import ConfigurationError
from quicvoice.gateway.twilio import CarrierLimits
from quicvoice.session.messages import MAX_METADATA_KEY_LEN, MAX_TOKEN_LEN
from quicvoice.settings import Address
from quicvoice.urls import parse_url

#: Carrier dialects the gateway speaks.
DIALECTS = ("twilio",)
#: Codecs offered to the backend by default: µ-law straight through, else 16 kHz L16.
DEFAULT_GATEWAY_CODECS = ("PCMU/8000", "L16/16000")


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """One gateway: a WebSocket endpoint for a carrier, bridging each call to a session."""

    #: The voice service, as ``quicvoice.connect`` takes it: ``quic://HOST:PORT`` or
    #: ``https://HOST:PORT/PATH`` (the forwarder's VIP in a deployment).
    backend: str
    #: Where the carrier's WebSocket connects (behind a TLS terminator: ``specs/gateway.md``).
    listen: Address = ("127.0.0.1", 8080)
    #: The carrier's message dialect.
    dialect: str = "twilio"
    #: One credential for every call (sent in each session's hello); kept out of ``repr``.
    token: str | None = field(default=None, repr=False)
    #: Otherwise the ``customParameters`` entry holding each call's own credential (it is
    #: taken out of the metadata); a call without it is bridged without a token.
    token_parameter: str | None = "token"
    #: Codecs offered to the backend, preferred first (``PCMU/8000`` needs no transcoding).
    codecs: tuple[str, ...] = DEFAULT_GATEWAY_CODECS
    #: Certificate checks, as ``connect`` has them (default: the system's trust store).
    ca_file: str | None = None
    certificate_hashes: tuple[str, ...] = ()
    verify: bool = True
    server_name: str | None = None
    #: Seconds to get a session for a new call.
    connect_timeout: float = 5.0
    #: Seconds a new WebSocket may take to send ``start``.
    start_timeout: float = 10.0
    #: Seconds without any message from the carrier before a stream is given up (a live
    #: stream sends media every 20 ms, silence included).
    idle_timeout: float = 10.0
    #: The client's liveness check: seconds of sending without an answer before the call
    #: resumes elsewhere (``connect(liveness_timeout=)``).
    liveness_timeout: float = 1.0
    #: Seconds a call may spend resuming before it is given up.
    reconnect_timeout: float = 10.0
    #: Calls bridged at once; one more WebSocket is closed with 1013 (try again later).
    max_calls: int = 1000
    #: Bounds on each carrier stream's messages.
    limits: CarrierLimits = field(default_factory=CarrierLimits)

    def __post_init__(self) -> None:
        try:
            parse_url(self.backend)
        except ValueError as error:
            raise ConfigurationError(f"backend: {error}") from None
        if self.dialect not in DIALECTS:
            raise ConfigurationError(f"dialect: {self.dialect!r} is not one of {DIALECTS}")
        if self.token is not None and not 0 < len(self.token) <= MAX_TOKEN_LEN:
            raise ConfigurationError(f"token: must be 1 to {MAX_TOKEN_LEN} characters")
        if self.token_parameter is not None and not (
            0 < len(self.token_parameter) <= MAX_METADATA_KEY_LEN
        ):
            raise ConfigurationError(
                f"token_parameter: must be 1 to {MAX_METADATA_KEY_LEN} characters"
            )
        if not self.codecs:
            raise ConfigurationError("codecs: offer at least one")
        for codec in self.codecs:
            try:
                spec = CodecSpec.parse(codec)
            except (TypeError, ValueError) as error:
                raise ConfigurationError(f"codecs: {error}") from None
            if negotiate([spec], DEFAULT_CODECS) is None:
                names = ", ".join(str(c) for c in DEFAULT_CODECS)
                raise ConfigurationError(f"codecs: {codec!r} is not one of {names}")
        if not self.verify and (self.ca_file is not None or self.certificate_hashes):
            raise ConfigurationError("verify=False contradicts ca_file / certificate_hashes")
        if self.ca_file is not None and self.certificate_hashes:
            raise ConfigurationError("give ca_file or certificate_hashes, not both")
        for name in (
            "connect_timeout",
            "start_timeout",
            "idle_timeout",
            "liveness_timeout",
            "reconnect_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name}: must be positive seconds")
        if self.max_calls < 1:
            raise ConfigurationError("max_calls: must be at least 1")
