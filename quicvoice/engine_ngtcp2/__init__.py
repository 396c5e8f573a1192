"""A native QUIC engine prototype: Debian's ngtcp2 + gnutls, bound by ``quicvoice._ngtcp2``.

Optional: the C extension is built by ``pip install`` only where ``libngtcp2-dev`` and
``libngtcp2-crypto-gnutls-dev`` are installed (with ``quicvoice._udpbatch``, its socket loop's
``recvmmsg``/``sendmmsg``). ``AVAILABLE`` says whether it can be used here,
``UNAVAILABLE`` why not; ``require()`` raises ``ConfigurationError`` naming the missing
packages. specs/engine-ngtcp2.md has the design, the figures and what a full engine still needs.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import ConfigurationError

#: The ``quicvoice._ngtcp2`` this code was written for (its ``ABI_VERSION``).
ABI_VERSION = 3
#: The ``quicvoice._udpbatch`` this code was written for (its ``ABI_VERSION``).
UDPBATCH_ABI_VERSION = 1
#: The Debian packages the extension is built against.
DEBIAN_PACKAGES = ("libngtcp2-dev", "libngtcp2-crypto-gnutls-dev")


def _load() -> tuple[ModuleType | None, str]:
    """The extension module, or why it cannot be used."""
    try:
        from .. import _ngtcp2
    except ImportError as error:
        return None, (
            f"the extension quicvoice._ngtcp2 was not built ({error}); install "
            f"{' and '.join(DEBIAN_PACKAGES)}, then reinstall quicvoice"
        )
    if _ngtcp2.ABI_VERSION != ABI_VERSION:
        return None, (
            f"quicvoice._ngtcp2 is stale (ABI {_ngtcp2.ABI_VERSION}, not {ABI_VERSION}): "
            "reinstall quicvoice"
        )
    return _ngtcp2, ""


def _load_udpbatch() -> tuple[ModuleType | None, str]:
    """The socket loop's batch I/O extension, or why it cannot be used."""
    try:
        from .. import _udpbatch
    except ImportError as error:
        return None, (
            f"the extension quicvoice._udpbatch was not built ({error}); it is built with "
            "quicvoice._ngtcp2: reinstall quicvoice"
        )
    if _udpbatch.ABI_VERSION != UDPBATCH_ABI_VERSION:
        return None, (
            f"quicvoice._udpbatch is stale (ABI {_udpbatch.ABI_VERSION}, not "
            f"{UDPBATCH_ABI_VERSION}): reinstall quicvoice"
        )
    return _udpbatch, ""


native, UNAVAILABLE = _load()
udpbatch, _UDPBATCH_UNAVAILABLE = _load_udpbatch()
if native is not None and udpbatch is None:
    native, UNAVAILABLE = None, _UDPBATCH_UNAVAILABLE
#: Whether the ngtcp2 engine can run here.
AVAILABLE = native is not None


def require() -> ModuleType:
    """Return the extension module; raise ``ConfigurationError`` saying what is missing."""
    if native is None:
        raise ConfigurationError(f"engine 'ngtcp2' is not available: {UNAVAILABLE}")
    return native


def require_udpbatch() -> ModuleType:
    """Return the batch I/O extension the engine's socket loop uses (``ConfigurationError``
    as ``require``)."""
    require()
    assert udpbatch is not None  # the engine is available only with it
    return udpbatch
