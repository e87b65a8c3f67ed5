"""Protocols: sans-I/O state machines (``connection``) and the asyncio glue that moves their bytes (``tcp``)."""
