"""The cim client: an asyncio SDK (``Client``), the route's HTTP API (``RouteClient``) and the console built on them."""

from cim.client.route import ClientError, RouteClient, register
from cim.client.sdk import Client, Message, Receipt

__all__ = ["Client", "ClientError", "Message", "Receipt", "RouteClient", "register"]
