"""``quicvoice serve`` on the ngtcp2 engine: a backend configuration (``engine = "ngtcp2"``) to
a running ``Ngtcp2VoiceServer``, or a ``ConfigurationError`` naming what this engine lacks.
"""

from __future__ import annotations

import asyncio
import signal

from ..asyncio.config import BackendConfig
from ..asyncio.loops import DEFAULT_LOOP
from ..asyncio.loops import run as run_on
from ..asyncio.server import VoiceServer
from ..asyncio.workers import say_json
from ..auth import AcceptHook
from ..certificates import generate_certificate
from ..errors import ConfigurationError
from ..settings import format_address
from . import require
from .endpoint import EngineConfig
from .voice_server import Ngtcp2VoiceServer, SessionHandler


def engine_config(config: BackendConfig) -> tuple[EngineConfig, bytes | None]:
    """The engine's configuration for ``config`` and the SHA-256 of the development
    certificate made when none is configured; ``ConfigurationError`` for what it cannot serve
    (the extension not built, no QUIC-LB configuration). Behind a forwarder
    (``config.forwarder``) the engine unwraps its encapsulated datagrams and answers its
    health probes."""
    require()
    if not config.configs:
        raise ConfigurationError(
            "engine 'ngtcp2': needs a [[configs]] QUIC-LB configuration (every CID it issues "
            "must encode the server ID)"
        )
    if config.certificate is not None and config.private_key is not None:
        try:
            certificate = config.certificate.read_bytes()
            private_key = config.private_key.read_bytes()
        except OSError as error:
            raise ConfigurationError(f"certificate: {error}") from None
        fingerprint = None
    else:
        development = generate_certificate()
        certificate = development.certificate_pem()
        private_key = development.private_key_pem()
        fingerprint = development.sha256
    engine = EngineConfig(
        local=config.listen,
        server_id=config.server_id,
        lb_config=config.configs[-1],
        reset_key=config.reset_key,
        certificate=certificate,
        private_key=private_key,
        forwarder=config.forwarder,
    )
    return engine, fingerprint


def check_webtransport(requested: bool) -> None:
    """``ConfigurationError`` when WebTransport is asked of the ngtcp2 engine."""
    if requested:
        raise ConfigurationError(
            "engine 'ngtcp2' serves raw QUIC (quicvoice/1) only: WebTransport (and the browser "
            'page, --web) needs engine = "aioquic"'
        )


def voice_server(
    config: BackendConfig, handler: SessionHandler, *, accept: AcceptHook | None = None
) -> tuple[Ngtcp2VoiceServer, bytes | None]:
    """An ngtcp2 voice backend for ``config`` running ``handler``, with its credentials, accept
    hook and session store (those of a ``VoiceServer`` for ``config`` that is never started:
    release them with its ``aclose()``, the backend's ``services``), ``/metrics`` at
    ``config.metrics`` once started, and the development certificate's SHA-256 (``None``:
    configured)."""
    engine, fingerprint = engine_config(config)
    services = VoiceServer(config, handler, accept=accept)
    server = Ngtcp2VoiceServer(
        engine, handler, accept=accept, services=services, metrics=config.metrics
    )
    return server, fingerprint


def serve(
    config: BackendConfig,
    handler: SessionHandler,
    *,
    accept: AcceptHook | None,
    app_spec: str,
    webtransport: bool,
    loop: str = DEFAULT_LOOP,
) -> int:
    """Run the backend on event loop ``loop`` until SIGINT or SIGTERM, printing where it
    listens and where ``/metrics`` is served (as ``quicvoice serve`` does on aioquic)."""
    check_webtransport(webtransport)
    server, fingerprint = voice_server(config, handler, accept=accept)

    async def run() -> None:
        try:
            host, port = await server.start()
        except BaseException:  # (a metrics address in use): release the store too
            if server.services is not None:
                await server.services.aclose()
            raise
        stop = asyncio.Event()
        running = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            running.add_signal_handler(signum, stop.set)
        listening = {
            "listening": f"{host}:{port}",
            "server_id": config.server_id.hex(),
            "certificate_sha256": fingerprint.hex() if fingerprint else "-",
            "app": app_spec,
            "engine": "ngtcp2",
            "loop": loop,
        }
        say_json(listening)
        metrics = server.telemetry.metrics_address
        if metrics is not None:
            say_json({"metrics": f"http://{format_address(metrics)}/metrics"})
        try:
            await stop.wait()
        finally:
            server.close()
            if server.services is not None:
                await server.services.aclose()

    run_on(run(), loop)
    return 0
