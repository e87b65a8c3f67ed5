"""The cim client: an asyncio SDK (``Client``), the route's HTTP API (``RouteClient``) and the console built on them."""

from cim.client.route import (
    ClientError,
    GroupCalls,
    GroupSummary,
    LoggedInDevice,
    LoginAnswer,
    RouteClient,
    RouteSession,
    register,
)
from cim.client.sdk import Client, Message, Receipt, SendTimeout, Stopped

__all__ = [
    "Client", "ClientError", "GroupCalls", "GroupSummary", "LoggedInDevice", "LoginAnswer", "Message", "Receipt",
    "RouteClient", "RouteSession", "SendTimeout", "Stopped", "register",
]
