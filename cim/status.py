"""CIM's status codes, shared by the route's JSON answers and the wire's error frames.

On JSON the code is a string ("9000"), as CIM sends it; on the wire it is the int.
"""

from __future__ import annotations

from enum import Enum


class Status(Enum):
    SUCCESS = (9000, "success")
    VALIDATION_FAIL = (3000, "invalid argument")
    FAIL = (4000, "failure")
    REPEAT_LOGIN = (5000, "user already logged in; log out first")
    OFF_LINE = (7000, "the user you chose is offline; the message is stored for them")
    SERVER_NOT_AVAILABLE = (7100, "no cim-server is available, please try again later")
    ACCOUNT_NOT_MATCH = (9100, "userId and userName do not match")

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message

    @property
    def code_str(self) -> str:
        return str(self.code)


class CimError(Exception):
    """A business error that has a CIM status: answered, never a crash."""

    def __init__(self, status: Status, message: str | None = None) -> None:
        super().__init__(message or status.message)
        self.status = status
        self.message = message or status.message
