"""Dialling a voice URL, the I/O half: resolve the name, load the trust store, race the
addresses (``quicvoice.happy_eyeballs`` decides when), and turn failures into errors that say
which: ``NameResolutionError``, ``CertificateVerificationError``, ``SessionRefusedError``,
``ConnectTimeoutError``.

Generic over what an attempt opens (``connect`` races ``VoiceClient``s), so this module does
not import the client.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509

from ..errors import (
    CertificateVerificationError,
    ConfigurationError,
    ConnectFailedError,
    ConnectTimeoutError,
    NameResolutionError,
    SessionRefusedError,
)
from ..happy_eyeballs import (
    AbandonAttempt,
    ConnectionRace,
    RaceFailed,
    RaceTimedOut,
    RaceWon,
    StartAttempt,
    interleave_families,
)
from ..quic import VoiceQuicConfiguration
from ..settings import Address
from ..tls import (
    CHECK_FORMAT,
    CertificatePolicy,
    certificate_sha256,
    hashes_from,
    parse_trust_anchors,
    verify_server_certificate,
)
from ..urls import VoiceURL, format_authority, is_ip_literal

logger = logging.getLogger("quicvoice.client")

T = TypeVar("T")
#: Certificate files larger than this are refused (the system bundle is ~200 KiB).
MAX_TRUST_FILE = 16 * 1024 * 1024
#: Files read at most from a trust-store directory (``capath``).
MAX_TRUST_DIRECTORY_FILES = 4096


# -- names -----------------------------------------------------------------------------------


async def resolve(host: str, port: int, timeout: float) -> list[Address]:
    """The UDP addresses of ``host`` (an IP literal is its own), in the resolver's order.

    Raises ``NameResolutionError`` when the name does not resolve, or not within ``timeout``.
    No ``AI_ADDRCONFIG``: it would hide ``::1`` on a host whose only IPv6 is loopback.
    """
    if is_ip_literal(host):
        return [(host, port)]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP),
            timeout,
        )
    except TimeoutError:
        raise NameResolutionError(host, f"no answer within {timeout:.3g} s") from None
    except socket.gaierror as error:
        raise NameResolutionError(host, error.strerror or str(error)) from None
    except (UnicodeError, ValueError) as error:
        raise NameResolutionError(host, f"not a valid name ({error})") from None
    addresses = [
        (str(info[4][0]), int(info[4][1]))
        for info in infos
        if info[0] in (socket.AF_INET, socket.AF_INET6)
    ]
    if not addresses:
        raise NameResolutionError(host, "no IPv4 or IPv6 address")
    return addresses


def usable_addresses(
    host: str, addresses: Sequence[Address], local_host: str | None
) -> list[Address]:
    """Order ``addresses`` for the race (IPv6 first, interleaved), keeping only the family of
    ``local_host`` when the caller chose one."""
    if local_host is not None:
        want_ipv6 = ":" in local_host
        addresses = [a for a in addresses if (":" in a[0]) == want_ipv6]
        if not addresses:
            family = "IPv6" if want_ipv6 else "IPv4"
            raise NameResolutionError(
                host, f"no {family} address, and local_address {local_host} is {family}"
            )
    return interleave_families(addresses)


# -- certificates ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """How a client authenticates the server, as ``connect``'s keywords gave it."""

    #: The name sent as SNI and checked against the certificate (DNS name or IP literal).
    server_name: str
    #: The policy the handshake enforces; ``None``: no check at all (``verify=False``).
    policy: CertificatePolicy | None


def tls_settings(
    url: VoiceURL,
    *,
    server_name: str | None,
    ca_file: str | os.PathLike[str] | None,
    certificate_hashes: Iterable[bytes | str],
    verify: bool,
) -> TlsSettings:
    """Build the certificate policy: pinned hashes, ``ca_file``, or the system trust store."""
    name = server_name or url.host
    hashes = hashes_from(certificate_hashes)
    if not verify:
        if hashes or ca_file is not None:
            raise ValueError("verify=False contradicts ca_file / certificate_hashes")
        return TlsSettings(server_name=name, policy=None)
    if hashes and ca_file is not None:
        raise ValueError("give ca_file or certificate_hashes, not both")
    if hashes:
        return TlsSettings(
            server_name=name, policy=CertificatePolicy(server_name=name, certificate_hashes=hashes)
        )
    anchors = load_ca_file(ca_file) if ca_file is not None else system_trust_anchors()
    return TlsSettings(
        server_name=name, policy=CertificatePolicy(server_name=name, trust_anchors=anchors)
    )


def system_trust_anchors() -> tuple[x509.Certificate, ...]:
    """The system's CA certificates (``ssl.get_default_verify_paths()``: the ``SSL_CERT_FILE``
    / ``SSL_CERT_DIR`` variables, else OpenSSL's defaults, on Debian
    ``/etc/ssl/certs/ca-certificates.crt``), not ``certifi``'s bundle as aioquic would."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile):
        return load_ca_file(paths.cafile)
    if paths.capath and os.path.isdir(paths.capath):
        return _load_directory(paths.capath)
    raise ConfigurationError(
        "no system trust store found (ssl.get_default_verify_paths()): "
        "pass ca_file= or certificate_hashes="
    )


def load_ca_file(path: str | os.PathLike[str]) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM file; ``ConfigurationError`` naming the file otherwise."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise ConfigurationError(f"ca_file {os.fspath(path)!r}: {error.strerror}") from None
    return _load_file(os.fspath(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=8)
def _load_file(path: str, mtime_ns: int, size: int) -> tuple[x509.Certificate, ...]:
    # Cached by modification time and size: a second call costs a stat, not a parse.
    if size > MAX_TRUST_FILE:
        raise ConfigurationError(f"ca_file {path!r} is larger than {MAX_TRUST_FILE} octets")
    try:
        pem = Path(path).read_bytes()
    except OSError as error:
        raise ConfigurationError(f"ca_file {path!r}: {error.strerror}") from None
    try:
        return parse_trust_anchors(pem, path)
    except ValueError as error:
        raise ConfigurationError(f"ca_file {error}") from None


def _load_directory(path: str) -> tuple[x509.Certificate, ...]:
    anchors: dict[bytes, x509.Certificate] = {}
    with os.scandir(path) as entries:
        for count, entry in enumerate(entries):
            if count >= MAX_TRUST_DIRECTORY_FILES:
                break
            if not entry.is_file():
                continue
            try:
                for certificate in load_ca_file(entry.path):
                    anchors[certificate_sha256(certificate)] = certificate
            except ConfigurationError:
                continue  # not a certificate file (the directory holds symlinks and CRLs)
    if not anchors:
        raise ConfigurationError(f"trust store directory {path!r} holds no certificates")
    return tuple(anchors.values())


def client_configuration(
    settings: TlsSettings,
    *,
    alpn: str,
    idle_timeout: float,
    on_rejected: Callable[[CertificateVerificationError], None],
) -> VoiceQuicConfiguration:
    """A client ``QuicConfiguration`` whose handshake enforces ``settings``; a refused
    certificate is reported to ``on_rejected`` as it happens, inside the handshake."""
    configuration = VoiceQuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn],
        max_datagram_frame_size=65536,
        idle_timeout=idle_timeout,
        server_name=settings.server_name,
        verify_mode=ssl.CERT_NONE,  # aioquic's own check (certifi) is replaced by ours
    )
    policy = settings.policy
    if policy is not None:

        def check(leaf: x509.Certificate, chain: list[x509.Certificate]) -> None:
            try:
                verify_server_certificate(policy, leaf, chain, datetime.datetime.now(datetime.UTC))
            except CertificateVerificationError as error:
                on_rejected(error)
                raise
            except Exception as error:  # whatever the server sent, it is a refusal, not a crash
                refusal = CertificateVerificationError(CHECK_FORMAT, f"cannot check it: {error!r}")
                on_rejected(refusal)
                raise refusal from error

        configuration.certificate_check = check
    return configuration


def request_authority(url: VoiceURL, server_name: str | None) -> str:
    """The WebTransport request's ``:authority``."""
    return format_authority(server_name or url.host, url.port)


# -- the race --------------------------------------------------------------------------------


def is_final(error: BaseException) -> bool:
    """Whether a failed attempt ends the race: the server itself refused (its certificate, or
    the session), so another address of the same name would only repeat it."""
    return isinstance(error, CertificateVerificationError | SessionRefusedError)


async def race(
    host: str,
    addresses: Sequence[Address],
    open_attempt: Callable[[Address], Coroutine[Any, Any, T]],
    close_attempt: Callable[[T], Awaitable[None]],
    *,
    deadline: float,
    attempt_delay: float,
) -> tuple[T, Address]:
    """Open attempts to ``addresses`` happy-eyeballs style; return the winner and its address.

    ``open_attempt`` must close what it opened when it is cancelled (an abandoned attempt) or
    fails; ``close_attempt`` closes a winner that came second. Every attempt is over, its
    connection closed, when this returns or raises.
    """
    loop = asyncio.get_running_loop()
    machine = ConnectionRace(addresses, deadline=deadline, attempt_delay=attempt_delay)
    tasks: dict[int, asyncio.Task[T]] = {}
    errors: dict[int, BaseException] = {}
    abandoned: list[asyncio.Task[T]] = []
    outcome: tuple[T, Address] | None = None
    failure: BaseException | None = None
    machine.start(loop.time())
    try:
        while True:
            action = machine.next_action()
            while action is not None:
                if isinstance(action, StartAttempt):
                    logger.debug("connecting to %s", format_authority(*action.address))
                    tasks[action.index] = loop.create_task(open_attempt(action.address))
                elif isinstance(action, AbandonAttempt):
                    abandoned.append(tasks.pop(action.index))
                elif isinstance(action, RaceWon):
                    outcome = (tasks.pop(action.index).result(), action.address)
                elif isinstance(action, RaceFailed):
                    failure = _race_error(host, addresses, errors, action.final_index)
                elif isinstance(action, RaceTimedOut):
                    failure = ConnectTimeoutError(
                        f"no voice session with {host} ({_listed(addresses)}) in time"
                        + (f"; failed attempts: {_described(addresses, errors)}" if errors else "")
                    )
                action = machine.next_action()
            if outcome is not None:
                return outcome
            if failure is not None:
                raise failure
            timer = machine.get_timer()
            timeout = None if timer is None else max(0.0, timer - loop.time())
            running = {task for index, task in tasks.items() if index in machine.running}
            if running:
                done, _ = await asyncio.wait(
                    running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            else:
                done = set()
                await asyncio.sleep(timeout or 0.0)
            now = loop.time()
            for index, task in list(tasks.items()):
                if task not in done:
                    continue
                error = task.exception()
                if error is None:
                    machine.attempt_succeeded(index, now)
                else:
                    errors[index] = error
                    tasks.pop(index)
                    machine.attempt_failed(index, now, final=is_final(error))
            timer = machine.get_timer()
            if timer is not None and now >= timer:
                machine.handle_timer(now)
    finally:
        abandoned.extend(tasks.values())
        await _close_all(abandoned, close_attempt)


async def _close_all(
    tasks: list[asyncio.Task[T]], close_attempt: Callable[[T], Awaitable[None]]
) -> None:
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is None:
            await close_attempt(task.result())  # it won too, but second


def _race_error(
    host: str,
    addresses: Sequence[Address],
    errors: dict[int, BaseException],
    final_index: int | None,
) -> BaseException:
    if final_index is not None:
        return errors[final_index]
    if len(errors) == 1:
        return next(iter(errors.values()))
    return ConnectFailedError(
        f"no voice session with {host}: every address failed: {_described(addresses, errors)}"
    )


def _listed(addresses: Sequence[Address]) -> str:
    return ", ".join(format_authority(*address) for address in addresses)


def _described(addresses: Sequence[Address], errors: dict[int, BaseException]) -> str:
    return "; ".join(
        f"{format_authority(*addresses[index])}: {error!r}"
        for index, error in sorted(errors.items())
    )
