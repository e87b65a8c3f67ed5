"""Protocols: sans-I/O state machines (``connection``, ``client``) and the asyncio glue moving their bytes (``tcp``, ``ws``)."""

from __future__ import annotations

from cim.status import Status

# Receipt codes that mean the server took the message: stored for an online receiver
# (delivered), or for an offline one. Both ends decide by them: the server sends
# these only when asked (a clientMsgId), the client treats them as success.
ACCEPTED_CODES = (Status.SUCCESS.code, Status.OFF_LINE.code)
