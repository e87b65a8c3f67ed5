"""The route's HTTP API: CIM's paths, field names and codes, on Starlette.

Every answer is ``{code, message, reqNo, dataBody}`` with ``code`` a string
("9000"). Business errors (5000, 7000, 9100, ...) come back with HTTP 200, as in
CIM; bad JSON and bad fields get 3000 naming the field, never a 500.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from cim.status import CimError, Status
from route.service import RouteService

UserId = Field(gt=0, le=2**63 - 1)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reqNo: str | None = None
    timeStamp: int | None = None


class RegisterAccount(_Body):
    userName: str = Field(min_length=1, max_length=64)


class Login(_Body):
    userId: int = UserId
    userName: str = Field(min_length=1, max_length=64)


class P2PRoute(_Body):
    userId: int = UserId
    receiveUserId: int = UserId
    msg: str = Field(min_length=1, max_length=4096)


class GroupRoute(_Body):
    userId: int = UserId
    msg: str = Field(min_length=1, max_length=4096)


class OffLine(_Body):
    userId: int = UserId


class FetchOfflineMsgs(_Body):
    receiveUserId: int = UserId


def answer(status: Status, data: Any = None, req_no: str | None = None, message: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"code": status.code_str, "message": message or status.message, "reqNo": req_no, "dataBody": data}
    )


Handler = Callable[[RouteService, Any], Awaitable[JSONResponse]]


def endpoint(model: type[_Body] | None, handler: Handler, summary: str) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Wrap a handler: parse and validate the JSON body into ``model``, map errors to CIM codes."""

    async def view(request: Request) -> JSONResponse:
        service: RouteService = request.app.state.service
        body = None
        if model is not None:
            try:
                raw = json.loads(await request.body() or b"null")
            except (ValueError, UnicodeDecodeError) as err:
                return answer(Status.VALIDATION_FAIL, message=f"body is not valid JSON: {err}")
            if not isinstance(raw, dict):
                return answer(Status.VALIDATION_FAIL, message="body must be a JSON object")
            try:
                body = model.model_validate(raw)
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()
                )
                return answer(Status.VALIDATION_FAIL, req_no=_req_no(raw), message=problems)
        try:
            return await handler(service, body)
        except CimError as err:
            return answer(err.status, req_no=getattr(body, "reqNo", None), message=err.message)

    view.__doc__ = summary
    return view


def _req_no(raw: dict[str, Any]) -> str | None:
    value = raw.get("reqNo")
    return value if isinstance(value, str) else None


async def _register(service: RouteService, body: RegisterAccount) -> JSONResponse:
    user_id = await service.register(body.userName)
    return answer(Status.SUCCESS, {"userId": user_id, "userName": body.userName}, body.reqNo)


async def _login(service: RouteService, body: Login) -> JSONResponse:
    server = await service.login(body.userId, body.userName)
    data = {"ip": server.host, "cimServerPort": server.tcp_port, "httpPort": server.http_port}
    return answer(Status.SUCCESS, data, body.reqNo)


async def _p2p(service: RouteService, body: P2PRoute) -> JSONResponse:
    status = await service.send_private(body.userId, body.receiveUserId, body.msg)
    return answer(status, None, body.reqNo)


async def _group(service: RouteService, body: GroupRoute) -> JSONResponse:
    await service.send_group(body.userId, body.msg)
    return answer(Status.SUCCESS, None, body.reqNo)


async def _online(service: RouteService, _: None) -> JSONResponse:
    users = await service.online_users()
    return answer(Status.SUCCESS, [{"userId": u, "userName": n} for u, n in users])


async def _offline(service: RouteService, body: OffLine) -> JSONResponse:
    await service.offline(body.userId)
    return answer(Status.SUCCESS, None, body.reqNo)


async def _fetch_offline(service: RouteService, body: FetchOfflineMsgs) -> JSONResponse:
    count = await service.fetch_offline(body.receiveUserId)
    return answer(Status.SUCCESS, {"count": count}, body.reqNo)


ENDPOINTS: list[tuple[str, list[str], type[_Body] | None, Handler, str]] = [
    ("/registerAccount", ["POST"], RegisterAccount, _register, "Register a user name; an existing name returns its id."),
    ("/login", ["POST"], Login, _login, "Log in: picks a cim-server for the user (9100 mismatch, 5000 repeat, 7100 none)."),
    ("/p2pRoute", ["POST"], P2PRoute, _p2p, "Private message; 7000 when the receiver is offline (stored for later)."),
    ("/groupRoute", ["POST"], GroupRoute, _group, "Group message to every online user but the sender."),
    ("/onlineUser", ["GET", "POST"], None, _online, "Online users as [{userId, userName}]."),
    ("/offLine", ["POST"], OffLine, _offline, "Log a user out and close their connection."),
    ("/fetchOfflineMsgs", ["POST"], FetchOfflineMsgs, _fetch_offline,
     "Deliver stored messages to the online user, in order, once."),
]


def openapi() -> dict[str, Any]:
    envelope = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "example": "9000"},
            "message": {"type": "string"},
            "reqNo": {"type": ["string", "null"]},
            "dataBody": {},
        },
    }
    paths: dict[str, Any] = {}
    for path, methods, model, _, summary in ENDPOINTS:
        for method in methods:
            op: dict[str, Any] = {
                "summary": summary,
                "responses": {"200": {"description": "CIM envelope", "content": {"application/json": {"schema": envelope}}}},
            }
            if model is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}
            paths.setdefault(path, {})[method.lower()] = op
    return {"openapi": "3.1.0", "info": {"title": "cim route", "version": "0.1.0"}, "paths": paths}


DOCS_PAGE = """<!doctype html><html><head><title>cim route API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div><script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script></body></html>"""


async def _openapi(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.openapi)


async def _docs(request: Request) -> HTMLResponse:
    return HTMLResponse(DOCS_PAGE)


async def _health(request: Request) -> JSONResponse:
    service: RouteService = request.app.state.service
    return JSONResponse({"status": "ok", "servers": [s.id for s in service.servers], "time": int(time.time())})


def create_app(service: RouteService) -> Starlette:
    routes = [
        Route(path, endpoint(model, handler, summary), methods=methods) for path, methods, model, handler, summary in ENDPOINTS
    ]
    routes += [Route("/openapi.json", _openapi), Route("/docs", _docs), Route("/health", _health)]
    app = Starlette(routes=routes)
    app.state.service = service
    app.state.openapi = openapi()
    return app
