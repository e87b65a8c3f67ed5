"""Role: answer a peer's in-band HISTORY requests: a page of the user's own inbox (``cim.history``
reads and filters it), written to that connection as one HISTORY frame.

A connection's events are handled one at a time and in order (``cim.server.ordering``), so one
connection runs at most one history scan at a time, each bounded by ``cim.history.SCAN_BUDGET``.
"""

from __future__ import annotations

import logging

from cim.backends import Backends
from cim.frame import encode_frame
from cim.history import History, HistoryQuery, refusal
from cim.protocols.connection import HistoryRequest
from cim.server.peer import Peer
from cim.status import CimError, Status

log = logging.getLogger("cim.server")


async def answer_history(peer: Peer, event: HistoryRequest, backends: Backends) -> None:
    """Serve the request: its page, or a refusal saying why (3000 for a bad query, 4000 when the store
    failed: ask again)."""
    request_id, user_id = event.request.clientMsgId, peer.user_id
    try:
        answer = (await History(backends).page(HistoryQuery.of_request(user_id, event.request))).answer(request_id, user_id)
    except CimError as err:
        answer = refusal(request_id, user_id, err.status, err.message)
    except Exception as err:
        log.error("history for user %s failed: %r", user_id, err)
        answer = refusal(request_id, user_id, Status.FAIL, f"history failed: {type(err).__name__}; try again")
    if not peer.closed:
        peer.push(encode_frame(answer.SerializeToString()))
