"""CIM's emoji shortcuts, as its console has them (emoji-java 5.0.0's table, ``emojis.tsv``):
``:emoji N`` lists page N, five a page, as ``:smile:--->😄``; and every line the console prints
shows ``:smile:`` as 😄. The text sent keeps the shortcut, as CIM's does: it converts when it
prints, so a receiver on CIM's Java console sees the emoji too, and one on a plain client the alias."""

from __future__ import annotations

import functools
import re
from importlib.resources import files
from typing import NamedTuple

PAGE_SIZE = 5  # CIM's EmojiCommand shows subList(5 * page, 5 * page + 5)

# emoji-java's alias candidates: a word between two colons (Java's \w is ASCII), found with
# lookarounds so that ":x:smile:" still offers "smile". "|type_N" skin tones are not supported.
CANDIDATE = re.compile(r"(?<=:)\+?[A-Za-z0-9_-]+(?=:)")


class Shortcut(NamedTuple):
    emoji: str
    aliases: tuple[str, ...]

    @property
    def alias(self) -> str:
        """What CIM shows for it (``EmojiParser.parseToAliases``): the first alias, in colons."""
        return f":{self.aliases[0]}:"


@functools.cache
def shortcuts() -> tuple[Shortcut, ...]:
    """Every emoji in the order of CIM's ``:emoji`` pages."""
    text = files("cim.client").joinpath("emojis.tsv").read_text(encoding="utf-8")
    rows = (line.split("\t") for line in text.splitlines() if line and not line.startswith("#"))
    return tuple(Shortcut(emoji, tuple(aliases.split())) for emoji, aliases in rows)


@functools.cache
def _by_alias() -> dict[str, str]:
    return {alias: s.emoji for s in shortcuts() for alias in s.aliases}


def page_count() -> int:
    return -(-len(shortcuts()) // PAGE_SIZE)


def page(number: int) -> tuple[Shortcut, ...]:
    """Page ``number`` (from 0) of the shortcuts; empty past the last."""
    return shortcuts()[PAGE_SIZE * number:PAGE_SIZE * (number + 1)] if number >= 0 else ()


def emojize(text: str) -> str:
    """``text`` with each known ``:alias:`` replaced by its emoji, as emoji-java's ``parseToUnicode``
    does it: every candidate in turn, each replacing all of its occurrences."""
    by_alias = _by_alias()
    for candidate in CANDIDATE.findall(text):
        emoji = by_alias.get(candidate)
        if emoji is not None:
            text = text.replace(f":{candidate}:", emoji)
    return text
