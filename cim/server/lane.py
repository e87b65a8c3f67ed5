"""Role: the node's hot path from a stored message to its pushes: ``push_live`` (a user's
streams), ``push_each`` (one append's runs to many users here: a group message),
``push_runs`` (a run to many users here from a doorbell off the bus) and ``PrivateLane``
(private messages to a user on this node, stored, pushed and, when the sender asked,
answered in one step).

CIM's client writes each message in a read of its own, to one user, with no clientMsgId:
nothing goes back to the sender, nothing is deduplicated. ``ServerConnection.plain_read``
recognises such a read whole (``cim.wire.scan_plain_read``), and ``PrivateLane.take`` settles
it with no frame list, no event and no backlog: the connection's quota is charged as its
screen would have been (``PeerQuota.fits``), and the messages go through
``PrivateLane.settle``, which is also the dispatcher's way for the same messages when they
come as an event. So a read is decided alike whichever way it comes. Anything else (a
receiver on another node, a backlog ahead of the read, a quota that does not fit, an inbox
that is not in this process) is left to the general way, with nothing taken.

Messages with clientMsgIds (the SDK's) take the same way, to ``PrivateLane.deliver_answered``:
the receiver's inbox and the sender's copy, the pushes and the receipts in one compiled step
(a run with resends: ``cim.server.resends``).

Compiled (``cim/_lane.pyx``, twin ``cim/_lane_py.py``), chosen with the frame codec as
``cim.wire`` is.
"""

from __future__ import annotations

from cim.frame import IMPLEMENTATION

if IMPLEMENTATION == "python":
    from cim._lane_py import PrivateLane, push_each, push_live, push_runs
else:
    # Another class than the pure twin's to mypy, which types the names as that one's: the
    # two share one interface, and tests/test_lane.py holds both to it.
    from cim._lane import PrivateLane, push_each, push_live, push_runs  # type: ignore[assignment]

__all__ = ["IMPLEMENTATION", "PrivateLane", "push_each", "push_live", "push_runs"]
