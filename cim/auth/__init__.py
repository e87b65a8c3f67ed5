"""Who is who: account passwords (``passwords``) and the tokens that name a user (``tokens``)."""

from __future__ import annotations

from cim.auth.passwords import Passwords
from cim.auth.tokens import AuthError, Tokens

__all__ = ["AuthError", "Passwords", "Tokens"]
