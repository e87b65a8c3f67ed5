"""RouteClient under many concurrent calls, against a real HTTP server on 127.0.0.1:0.

The calls beyond ``max_connections`` must wait in RouteClient, not in httpx's pool:
httpcore 1.0 walks its whole queue against every connection each time a call starts
or ends, which held a load generator's event loop for 19 s when 1,400 of its users
reconnected at once (the chaos run). What httpx holds is counted with its public
event hooks: a request hook runs as a call enters the pool, a response hook as its
answer leaves it.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from cim.client import ClientError, RouteClient

ANSWER = json.dumps({"code": "9000", "message": "ok", "dataBody": None}).encode()
REFUSED = json.dumps({"code": "5000", "message": "busy", "dataBody": None}).encode()


async def answer_slowly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """HTTP/1.1 with keep-alive: each request is answered 10 ms later, with a CIM envelope
    (5000 for a request to /refuse)."""
    try:
        while head := await reader.readuntil(b"\r\n\r\n"):
            lines = head.decode().split("\r\n")
            length = next((int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length")), 0)
            await reader.readexactly(length)
            await asyncio.sleep(0.01)
            body = REFUSED if lines[0].split()[1] == "/refuse" else ANSWER
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(body), body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize("max_connections", [1, 4])
async def test_calls_beyond_the_pool_wait_in_the_client(max_connections: int) -> None:
    server = await asyncio.start_server(answer_slowly, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    inside = most = 0

    async def entered(request: httpx.Request) -> None:
        nonlocal inside, most
        inside += 1
        most = max(most, inside)

    async def left(response: httpx.Response) -> None:
        nonlocal inside
        inside -= 1

    async with server, RouteClient(f"http://127.0.0.1:{port}", max_connections=max_connections) as route:
        route._http.event_hooks = {"request": [entered], "response": [left]}
        calls = [route.call("/onlineUser") for _ in range(60)] + [route.call("/refuse") for _ in range(20)]
        answers = await asyncio.gather(*calls, return_exceptions=True)
    assert [a.code for a in answers[:60] if not isinstance(a, BaseException)] == [9000] * 60
    assert all(isinstance(a, ClientError) and a.code == 5000 for a in answers[60:])  # a refusal frees its place too
    assert inside == 0
    assert most == max_connections
