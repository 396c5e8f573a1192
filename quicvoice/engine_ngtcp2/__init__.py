"""A native QUIC engine prototype: Debian's ngtcp2 + gnutls, bound by ``quicvoice._ngtcp2``.

Optional: the C extension is built by ``pip install`` only where ``libngtcp2-dev`` and
``libngtcp2-crypto-gnutls-dev`` are installed. ``AVAILABLE`` says whether it can be used here,
``UNAVAILABLE`` why not; ``require()`` raises ``ConfigurationError`` naming the missing
packages. specs/engine-ngtcp2.md has the design, the figures and what a full engine still needs.
"""

from __future__ import annotations

from types import ModuleType

from ..errors import ConfigurationError

#: The ``quicvoice._ngtcp2`` this code was written for (its ``ABI_VERSION``).
ABI_VERSION = 2
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


native, UNAVAILABLE = _load()
#: Whether the ngtcp2 engine can run here.
AVAILABLE = native is not None


def require() -> ModuleType:
    """Return the extension module; raise ``ConfigurationError`` saying what is missing."""
    if native is None:
        raise ConfigurationError(f"engine 'ngtcp2' is not available: {UNAVAILABLE}")
    return native
