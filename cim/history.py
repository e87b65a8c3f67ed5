"""History: pages of a user's own inbox, one conversation's or all of it, optionally searched.

The one code path behind the route's ``/history`` and the in-band HISTORY request, over every
store's ``Inbox`` (``read_back`` pages back, ``read`` forward). What is shown:

* **A conversation with user P** (``peer_id``): the private messages in the user's inbox from P,
  and the user's copies of what they sent to P (``cim.delivery``: the user as ``responseId``, P as
  ``toUserId``). CIM's everyone-group messages from P carry no ``toUserId`` nor group, as private
  ones stored before ``toUserId`` existed do, so they are in it too.
* **A named group G** (``group_id``): the inbox's messages and notices with groupId G; members only.
* **Neither**: the whole inbox.
* **Keyword**: only messages whose text contains it, case-insensitively (``str.casefold``).

Seq is the user's inbox seq. A page is oldest first: with ``before_seq`` (or none: from the latest)
the newest ``limit`` matches below it, with ``after_seq`` the oldest ``limit`` above it. ``next_seq``
is where the next page starts (``before_seq = next_seq`` scrolls back, gap-free, until ``has_more``
is false). History is what retention keeps (``--inbox-max-messages``, ``--inbox-max-age``):
``truncated`` says the scan reached what retention had dropped.

Bounded work: a filtered scan reads the inbox in chunks and at most ``SCAN_BUDGET`` entries per call,
then answers what it found with ``has_more`` and ``next_seq`` where it stopped, so a keyword search
over a full inbox is a few calls, never one that pins the server or holds the inbox in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cim.backends import Backends, Inbox
from cim.proto import HISTORY, Request, Response
from cim.status import CimError, Status
from cim.wire_fields import RECEIVE_USER_ID, SEND_USER_ID, SEND_USER_NAME

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_KEYWORD_CHARS = 100
MAX_SEQ = 2**63 - 1
SCAN_BUDGET = 2_000  # inbox entries one call reads at most
SCAN_CHUNK = 250  # entries per inbox read of a filtered scan

Match = Callable[[Response], bool]


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """What a history call asks for (see the module); a bad one raises CimError 3000 naming the field."""

    user_id: int
    peer_id: int = 0  # 0: no conversation with a user
    group_id: str = ""  # "": no named group
    before_seq: int = 0  # 0: from the latest
    after_seq: int = 0  # not 0: page forward from it instead
    limit: int = DEFAULT_LIMIT
    keyword: str = ""  # "": every message

    def __post_init__(self) -> None:
        problem = None
        if self.peer_id and self.group_id:
            problem = "peerId and groupId: give one of them, or neither (the whole inbox)"
        elif not 0 <= self.peer_id <= MAX_SEQ:
            problem = f"peerId {self.peer_id}: not a user id"
        elif self.before_seq and self.after_seq:
            problem = "beforeSeq and afterSeq: give one of them (neither: from the latest)"
        elif not (0 <= self.before_seq <= MAX_SEQ and 0 <= self.after_seq <= MAX_SEQ):
            problem = f"beforeSeq/afterSeq: 0 to {MAX_SEQ}"
        elif not 1 <= self.limit <= MAX_LIMIT:
            problem = f"limit {self.limit}: 1 to {MAX_LIMIT}"
        elif len(self.keyword) > MAX_KEYWORD_CHARS:
            problem = f"keyword: at most {MAX_KEYWORD_CHARS} characters"
        if problem is not None:
            raise CimError(Status.VALIDATION_FAIL, problem)

    @classmethod
    def of_request(cls, user_id: int, request: Request) -> HistoryQuery:
        """The query of an in-band HISTORY request (limit 0, proto3's default: ``DEFAULT_LIMIT``)."""
        return cls(user_id, request.peerId, request.groupId, request.beforeSeq, request.afterSeq,
                   request.limit or DEFAULT_LIMIT, request.keyword)

    def match(self) -> Match | None:
        """The filter of this query (the one every store's history goes through); None: everything."""
        owner, peer, group = self.user_id, self.peer_id, self.group_id
        keyword = self.keyword.casefold()
        if not (peer or group or keyword):
            return None

        def wanted(push: Response) -> bool:
            if group and push.groupId != group:
                return False
            if peer:
                if push.groupId:
                    return False
                if push.responseId == owner:  # the user's copy of what they sent: to P?
                    if push.toUserId != peer:
                        return False
                elif push.responseId != peer:
                    return False
            return not keyword or keyword in push.resMsg.casefold()

        return wanted


@dataclass(slots=True)
class HistoryPage:
    """A page of history: the pushes oldest first (with their ``seq``, and ``receiveUserId`` set)."""

    messages: list[Response]
    has_more: bool  # the scan stopped before the end of what is kept: go on from next_seq
    next_seq: int  # the next page's before_seq (after_seq, paging forward); 0 when not has_more
    truncated: bool  # the scan reached messages retention had dropped

    def answer(self, request_id: int, user_id: int) -> Response:
        """The in-band HISTORY answer to the request with clientMsgId ``request_id``."""
        answer = Response(cmd=HISTORY, code=Status.SUCCESS.code, clientMsgId=request_id, hasMore=self.has_more,
                          nextSeq=self.next_seq, truncated=self.truncated,
                          messages=[push.SerializeToString() for push in self.messages])
        answer.properties[RECEIVE_USER_ID] = str(user_id)
        return answer

    def data_body(self) -> dict[str, Any]:
        """The route's dataBody."""
        return {"messages": [message_json(push) for push in self.messages], "hasMore": self.has_more,
                "nextSeq": self.next_seq, "truncated": self.truncated}


def refusal(request_id: int, user_id: int, status: Status, reason: str) -> Response:
    """The in-band HISTORY answer to a request that could not be served."""
    answer = Response(cmd=HISTORY, code=status.code, resMsg=reason, clientMsgId=request_id)
    answer.properties[RECEIVE_USER_ID] = str(user_id)
    return answer


def message_json(push: Response) -> dict[str, Any]:
    """One message of the route's answer: ids as JSON numbers, no groupId as null."""
    properties = push.properties
    return {
        "seq": push.seq,
        "msgId": push.msgId,
        "sendUserId": int(properties.get(SEND_USER_ID) or push.responseId),
        "sendUserName": properties.get(SEND_USER_NAME, ""),
        "receiveUserId": int(properties.get(RECEIVE_USER_ID) or 0),
        "toUserId": push.toUserId or None,  # a private message: whom it was sent to (the user's copy: not them)
        "groupId": push.groupId or None,
        "notice": push.notice,
        "text": push.resMsg,
        "timestamp": push.timestamp,
    }


def _push(user_id: int, seq: int, body: bytes) -> Response:
    """A stored body as the push it is, with its seq and (a received one has none) this user as receiver."""
    push = Response.FromString(body)
    push.seq = seq
    if RECEIVE_USER_ID not in push.properties:
        push.properties[RECEIVE_USER_ID] = str(user_id)
    return push


async def scan(inbox: Inbox, query: HistoryQuery) -> HistoryPage:
    """The page ``query`` asks for, read from ``inbox`` in chunks, at most ``SCAN_BUDGET`` entries."""
    wanted = query.match()
    back = not query.after_seq
    bound = query.after_seq or query.before_seq
    found: list[Response] = []
    budget = SCAN_BUDGET
    truncated = False
    while True:
        size = query.limit if wanted is None else min(budget, max(query.limit, SCAN_CHUNK))
        page = await (inbox.read_back if back else inbox.read)(query.user_id, bound, size)
        entries = page.entries[::-1] if back else page.entries  # in the order of the scan
        # The far end: back, the oldest kept (seq 1, or retention's start); forward, the latest.
        at_end = not entries or ((entries[-1][0] == 1 or page.truncated) if back else entries[-1][0] >= page.latest)
        truncated = truncated or (page.truncated and not back)  # forward: dropped between after_seq and the page
        for index, (seq, body) in enumerate(entries):
            push = _push(query.user_id, seq, body)
            if wanted is not None and not wanted(push):
                continue
            found.append(push)
            if len(found) == query.limit:
                more = index < len(entries) - 1 or not at_end
                return _page(found, back, more, seq, truncated or (back and page.truncated and not more))
        budget -= len(entries)
        if at_end:
            return _page(found, back, False, 0, truncated or (back and page.truncated))
        bound = entries[-1][0]
        if budget <= 0:
            return _page(found, back, True, bound, truncated)


def _page(found: list[Response], back: bool, has_more: bool, next_seq: int, truncated: bool) -> HistoryPage:
    return HistoryPage(found[::-1] if back else found, has_more, next_seq if has_more else 0, truncated)


class History:
    """History calls on the backends: the query checked against them (a registered peer, a group the
    user is in), then scanned."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends

    async def page(self, query: HistoryQuery) -> HistoryPage:
        if query.peer_id and await self.backends.accounts.user_name(query.peer_id) is None:
            raise CimError(Status.VALIDATION_FAIL, f"peerId {query.peer_id} is not a registered user")
        if query.group_id:
            members = await self.backends.groups.members(query.group_id)
            if members is None:
                raise CimError(Status.VALIDATION_FAIL, f"groupId {query.group_id!r}: no such group")
            if query.user_id not in members:
                raise CimError(Status.VALIDATION_FAIL, f"groupId {query.group_id!r}: user {query.user_id} is not a member")
        return await scan(self.backends.inbox, query)
