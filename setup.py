"""Build the compiled modules: the frame codec (cim/_frame.pyx), the message
wire hot path (cim/_wire.pyx), the token buckets every read is charged to
(cim/_ratelimit.pyx), the memory inbox's appends (cim/_inbox.pyx), the streams and sessions
the pushes read (cim/_stream.pyx), the pushes of stored messages (cim/_lane.pyx) and message
ids (cim/_ids.pyx).

Set CIM_NO_EXTENSIONS=1 to build without them: ``cim.frame``, ``cim.wire``, ``cim.ratelimit``,
``cim.backends.memory``, ``cim.server.streams``, ``cim.server.lane`` and ``cim.messages`` then
use the pure-Python twins. Without that variable a failed compile fails the build, loudly, so a
slow pure-Python install never happens by accident.
"""

import os

from setuptools import Extension, setup


def extensions() -> list[Extension]:
    if os.environ.get("CIM_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    return cythonize(
        [
            Extension("cim._frame", ["cim/_frame.pyx"], extra_compile_args=["-O3"]),
            Extension("cim._wire", ["cim/_wire.pyx"], extra_compile_args=["-O3"]),
            Extension("cim._ratelimit", ["cim/_ratelimit.pyx"], extra_compile_args=["-O3"]),
            Extension("cim._inbox", ["cim/_inbox.pyx"], extra_compile_args=["-O3"]),
            Extension("cim._stream", ["cim/_stream.pyx"], extra_compile_args=["-O3"]),
            Extension("cim._lane", ["cim/_lane.pyx"], extra_compile_args=["-O3"]),
            Extension("cim._ids", ["cim/_ids.pyx"], extra_compile_args=["-O3"]),
        ],
        compiler_directives={"language_level": "3"},
    )


setup(ext_modules=extensions())
