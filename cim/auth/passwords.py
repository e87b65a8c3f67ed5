"""Account passwords: argon2id hashes (argon2-cffi), computed off the event loop."""

from __future__ import annotations

import asyncio
import logging

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

log = logging.getLogger("cim.auth")

# OWASP's minimum for argon2id (19 MiB, 2 passes, 1 lane): tens of milliseconds per
# hash, so a login stays cheap while a stolen hash still costs that much per guess.
MEMORY_KIB = 19 * 1024
TIME_COST = 2
PARALLELISM = 1


class Passwords:
    """Hashes and checks passwords in a worker thread: a hash is tens of milliseconds of
    CPU, which on the loop would stall every connection the process serves."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher(time_cost=TIME_COST, memory_cost=MEMORY_KIB, parallelism=PARALLELISM)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        """Whether ``password`` is the one ``password_hash`` was made from."""
        try:
            return await asyncio.to_thread(self._hasher.verify, password_hash, password)
        except VerificationError:  # a wrong password
            return False
        except InvalidHashError:
            # A stored value that is not an argon2 hash (written by hand, truncated):
            # nobody can log in with it, and the operator should hear about it.
            log.warning("a stored password hash is not an argon2 hash; refusing the password")
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """The hash was made with other parameters than today's (say, before they were raised)."""
        return self._hasher.check_needs_rehash(password_hash)
