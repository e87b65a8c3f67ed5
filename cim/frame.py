"""The frame codec: varint32 length prefix + payload (Netty's protobuf framing).

Picks the compiled codec (``cim._frame``) when it was built and falls back to the
pure-Python twin (``cim._frame_py``) otherwise. ``IMPLEMENTATION`` says which.
``CIM_NO_EXTENSIONS=1`` skips the extension: at build time (``pip install .``)
it is not compiled, at run time it is not loaded even if present.
"""

from __future__ import annotations

import os

from cim._frame_py import DEFAULT_MAX_FRAME_SIZE, FrameError, encode_varint

if os.environ.get("CIM_NO_EXTENSIONS"):
    from cim._frame_py import FrameDecoder, encode_frame, encode_frames

    IMPLEMENTATION = "python"
else:
    try:
        # Another class than the pure twin's to mypy, which types the name as that one's:
        # the two share one interface, and tests/test_frame.py holds both to it.
        from cim._frame import FrameDecoder, encode_frame, encode_frames  # type: ignore[assignment]
    except ImportError:  # extension not built: the pure-Python twin serves
        from cim._frame_py import FrameDecoder, encode_frame, encode_frames

        IMPLEMENTATION = "python"
    else:
        IMPLEMENTATION = "cython"

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "IMPLEMENTATION",
    "FrameDecoder",
    "FrameError",
    "encode_frame",
    "encode_frames",
    "encode_varint",
]
