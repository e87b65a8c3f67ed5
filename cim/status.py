"""CIM's status codes, shared by the route's JSON answers and the wire's error frames.

On JSON the code is a string ("9000"), as CIM sends it; on the wire it is the int.
"""

from __future__ import annotations

from enum import Enum


class Status(Enum):
    """A CIM status: its code and message."""

    # CIM's own texts (StatusEnum), so scripts matching on them keep working.
    SUCCESS = (9000, "Success")
    VALIDATION_FAIL = (3000, "invalid argument")
    FAIL = (4000, "Failure")
    REPEAT_LOGIN = (5000, "Repeat login, log out an account please!")
    OFF_LINE = (7000, "You selected user is offline!, please try again later!")
    SERVER_NOT_AVAILABLE = (7100, "cim server is not available, please try again later!")
    ACCOUNT_NOT_MATCH = (9100, "The User information you have used is incorrect!")
    # cim's own (CIM has no authentication): 4xxx, after HTTP's 401/403/429.
    UNAUTHORIZED = (4001, "authentication required: missing, invalid or expired token")
    FORBIDDEN = (4003, "not allowed with this token")
    RATE_LIMITED = (4029, "rate limit exceeded: slow down")

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
