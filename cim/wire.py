"""The message hot path at the protobuf wire level (see ``cim._wire_py``).

Follows ``cim.frame``'s choice: the compiled ``cim._wire`` when the frame codec is
compiled (setup.py builds both or neither), the pure-Python twin otherwise.
"""

from __future__ import annotations

from cim.frame import IMPLEMENTATION

if IMPLEMENTATION == "cython":
    from cim._wire import encode_receipts, frame_sequenced, push_bodies, scan_chat_run, scan_plain_read
else:
    from cim._wire_py import encode_receipts, frame_sequenced, push_bodies, scan_chat_run, scan_plain_read

__all__ = ["IMPLEMENTATION", "encode_receipts", "frame_sequenced", "push_bodies", "scan_chat_run", "scan_plain_read"]
