"""The optional C extensions, built by ``pip install``.

- ``lb._native``: the forwarder's native fast path. Without a C compiler or Python's headers the
  package installs all the same and the forwarder routes on its Python path (it says so when it
  starts).
- ``quicvoice._ngtcp2``: the ngtcp2 engine prototype (specs/engine-ngtcp2.md), built only where
  Debian's ``libngtcp2-dev`` and ``libngtcp2-crypto-gnutls-dev`` headers are installed; without
  it ``quicvoice.engine_ngtcp2.AVAILABLE`` is false and the default engine (aioquic) is used.
- ``quicvoice._udpbatch``: recvmmsg/sendmmsg for that engine's socket loop (Linux), built with it.
"""

import os

from setuptools import Extension, setup

WARNINGS = ["-Wall", "-Wextra", "-Wno-missing-field-initializers"]
NGTCP2_HEADERS = ("/usr/include/ngtcp2/ngtcp2.h", "/usr/include/ngtcp2/ngtcp2_crypto_gnutls.h")

extensions = [
    Extension(
        "lb._native",
        sources=["lb/_native.c"],
        extra_compile_args=["-O2", "-std=gnu11", *WARNINGS],
        optional=True,
    )
]
if all(os.path.exists(header) for header in NGTCP2_HEADERS):
    extensions.append(
        Extension(
            "quicvoice._ngtcp2",
            sources=["quicvoice/_ngtcp2.c"],
            libraries=["ngtcp2_crypto_gnutls", "ngtcp2", "gnutls"],
            extra_compile_args=["-O2", "-std=gnu11", *WARNINGS],
            optional=True,
        )
    )
    extensions.append(
        Extension(
            "quicvoice._udpbatch",
            sources=["quicvoice/_udpbatch.c"],
            extra_compile_args=["-O2", "-std=gnu11", *WARNINGS],
            optional=True,
        )
    )

setup(ext_modules=extensions)
