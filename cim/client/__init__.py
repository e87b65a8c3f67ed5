"""The cim client: an asyncio SDK (``Client``) and the console built on it."""

from cim.client.sdk import Client, ClientError, Message, Receipt, register

__all__ = ["Client", "ClientError", "Message", "Receipt", "register"]
