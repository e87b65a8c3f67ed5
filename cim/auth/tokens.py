"""Tokens: HS256 JWTs (PyJWT) that name a user.

A route mints one at ``/login``; routes check it as a bearer token, cim-servers in
the TCP login frame. Claims: ``sub`` (the user id, a string), ``iat``, ``exp``.
Whoever holds the secret can mint them, which is how a deployment's own backend
logs its users in without the route's passwords (Centrifugo's model)::

    jwt.encode({"sub": "1001", "exp": int(time.time()) + 3600}, secret, "HS256")
"""

from __future__ import annotations

import time

import jwt

from cim.config import Config

ALGORITHM = "HS256"
# Seconds of clock difference allowed between the hosts minting tokens (a user's own
# backend among them) and the hosts checking them.
LEEWAY = 30.0
MAX_ID_DIGITS = len(str(2**63 - 1))
MISSING_SECRET = (
    "--auth token (the default) needs --secret (or CIM_SECRET), the same on every route and cim-server; "
    "or --auth none for CIM's behaviour without authentication"
)


class AuthError(Exception):
    """A token that proves nothing; ``reason`` says why, in words a client can show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Tokens:
    """Mints and verifies the tokens of one secret."""

    def __init__(self, secret: str, ttl: float) -> None:
        self._secret = secret
        self._ttl = ttl

    @classmethod
    def from_config(cls, config: Config) -> Tokens | None:
        """The Config's tokens; None under ``--auth none`` (nothing is checked)."""
        if config.auth == "none":
            return None
        if config.secret is None:
            raise ValueError(MISSING_SECRET)
        return cls(config.secret, config.token_ttl)

    def mint(self, user_id: int) -> str:
        now = int(time.time())
        return jwt.encode({"sub": str(user_id), "iat": now, "exp": now + int(self._ttl)}, self._secret, ALGORITHM)

    def verify(self, token: str) -> int:
        """The user id the token names; AuthError saying why it does not prove one."""
        if not token:
            raise AuthError("no token: log in through the route for one")
        try:
            # algorithms is fixed: a token must never choose how it is checked ("alg": "none").
            claims = jwt.decode(token, self._secret, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}, leeway=LEEWAY)
        except jwt.ExpiredSignatureError:
            raise AuthError("token expired: log in again for a new one") from None
        except jwt.InvalidSignatureError:
            raise AuthError("token signature does not match: signed with another secret") from None
        except jwt.MissingRequiredClaimError as err:
            raise AuthError(f"token has no {err.claim!r} claim") from None
        except jwt.DecodeError:
            raise AuthError("malformed token: not an HS256 JWT") from None
        except jwt.InvalidTokenError as err:
            raise AuthError(f"invalid token: {err}") from None
        subject = claims["sub"]  # PyJWT has checked that it is a string
        # ASCII digits only (int() takes other scripts' too), and few enough for int() to parse.
        if not (subject.isascii() and subject.isdecimal()) or len(subject) > MAX_ID_DIGITS or not 0 < int(subject) < 2**63:
            raise AuthError(f"token sub {subject!r} is not a user id")
        return int(subject)

    def verify_for(self, token: str, user_id: int) -> None:
        """AuthError unless the token names ``user_id``."""
        token_user = self.verify(token)
        if token_user != user_id:
            raise AuthError(f"the token is for user {token_user}, not {user_id}")
