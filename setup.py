"""The native fast path of the forwarder (lb/_native.c), built by ``pip install``.

Optional: without a C compiler or Python's headers the package installs all the same and the
forwarder routes on its Python path (it says so when it starts).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "lb._native",
            sources=["lb/_native.c"],
            extra_compile_args=[
                "-O2",
                "-std=gnu11",
                "-Wall",
                "-Wextra",
                "-Wno-missing-field-initializers",
            ],
            optional=True,
        )
    ]
)
