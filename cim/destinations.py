"""Where a message goes: one user, a named group, or everyone online (CIM's group chat);
or one of those later (a delayed message, CIM's ``:delay``).

A type instead of ``receiver_id=None``: "no receiver" used to mean "everyone", so a
frame naming a group was broadcast to every online user. Tuples, not dataclasses:
one is made per run of messages on the hot path, and a NamedTuple is the cheapest
immutable value Python builds.
"""

from __future__ import annotations

from typing import NamedTuple


class ToUser(NamedTuple):
    """A private message to ``user_id``."""

    user_id: int


class ToGroup(NamedTuple):
    """A message to the members of a named group (Request field 18, ``groupId``)."""

    group_id: str


class ToEveryone(NamedTuple):
    """CIM's group chat: every online user but the sender."""


EVERYONE = ToEveryone()

Now = ToUser | ToGroup | ToEveryone


class Later(NamedTuple):
    """``destination`` in ``delay_seconds`` (Request field 21): scheduled, delivered then.
    A destination of its own, so the hot path's type checks pass it on untouched."""

    destination: Now
    delay_seconds: int


Destination = Now | Later


def later(destination: Now, delay_seconds: int) -> Destination:
    """``destination`` after ``delay_seconds``; itself for 0 (Request field 21's default: now)."""
    return Later(destination, delay_seconds) if delay_seconds else destination
