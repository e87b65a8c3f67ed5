"""The route's HTTP API: CIM's paths, field names and codes, on Starlette.

Every answer is ``{code, message, reqNo, dataBody}`` with ``code`` a string
("9000"). Business errors (5000, 7000, 9100, ...) come back with HTTP 200, as in
CIM; bad JSON and bad fields get 3000 naming the field, never a 500. Under
``--auth token`` the calls in ACCESS need ``Authorization: Bearer``: a missing,
invalid or expired token is HTTP 401 (code "4001"), one that may not act for the
user named in the body HTTP 403 ("4003"), both in the same envelope. A client over
its address's request or login rate (``route.limits``) gets HTTP 429 ("4029").
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cim.backends import DeviceLogin, GroupInfo
from cim.history import DEFAULT_LIMIT, MAX_KEYWORD_CHARS, MAX_LIMIT, HistoryQuery
from cim.metrics import metrics_route
from cim.server_info import ServerInfo
from cim.status import CimError, Status
from cim.web import PROTO_FILE, STATIC_DIR
from route.limits import RouteLimits
from route.metrics import CODE_HEADER, MeasuredRequests, RouteMetrics
from route.service import RouteService

UserId = Field(gt=0, le=2**63 - 1)
# Required under --auth token (the route says so, naming the field), ignored under none.
Password = Field(default=None, min_length=1, max_length=1024)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reqNo: str | None = None
    timeStamp: int | None = None


class RegisterAccount(_Body):
    userName: str = Field(min_length=1, max_length=64)
    password: str | None = Password


class Login(_Body):
    userId: int = UserId
    userName: str = Field(min_length=1, max_length=64)
    password: str | None = Password
    # The Authorization header, put here by ``endpoint`` (a body's own "authorization" is
    # dropped): a client holding the user's token logs in again with it, no password.
    authorization: SkipJsonSchema[str | None] = None
    # Names the device (several per user: cim.server.devices); none is CIM's client, one login per user.
    deviceId: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")


# Seconds to deliver later (0: now); out of 1 to --max-delay-seconds: 3000 from cim.delivery, naming the limit.
DelaySeconds = Field(default=0)


class P2PRoute(_Body):
    userId: int = UserId
    receiveUserId: int = UserId
    msg: str = Field(min_length=1, max_length=4096)
    delaySeconds: int = DelaySeconds


class GroupRoute(_Body):
    userId: int = UserId
    msg: str = Field(min_length=1, max_length=4096)
    delaySeconds: int = DelaySeconds


class OffLine(_Body):
    userId: int = UserId


class FetchOfflineMsgs(_Body):
    receiveUserId: int = UserId


class Read(_Body):
    userId: int = UserId
    seq: int = Field(gt=0, le=2**64 - 1)  # past the inbox's latest: up to the latest


class PresenceQuery(_Body):
    userId: int = UserId
    userIds: list[Annotated[int, UserId]]  # more than cim.presence.MAX_WATCHED, or none: 3000 naming the limit


class History(_Body):
    """``cim.history``: userId's own inbox; peerId or groupId a conversation (neither: all of it)."""

    userId: int = UserId
    peerId: int | None = Field(default=None, gt=0, le=2**63 - 1)
    groupId: str | None = Field(default=None, min_length=1, max_length=64)
    beforeSeq: int | None = Field(default=None, gt=0, le=2**63 - 1)
    afterSeq: int | None = Field(default=None, gt=0, le=2**63 - 1)
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    keyword: str | None = Field(default=None, min_length=1, max_length=MAX_KEYWORD_CHARS)


GroupName = Field(min_length=1, max_length=64)
GroupId = Field(min_length=1, max_length=64)
Members: list[int] = Field(default_factory=list)  # past --group-max-members: 3000 from cim.groups, naming the limit


class GroupCreate(_Body):
    userId: int = UserId
    name: str = GroupName
    members: list[Annotated[int, UserId]] = Members


class GroupMembersChange(_Body):
    userId: int = UserId
    groupId: str = GroupId
    members: list[Annotated[int, UserId]] = Members


class GroupCall(_Body):
    userId: int = UserId
    groupId: str = GroupId


class GroupRename(GroupCall):
    name: str = GroupName


class GroupList(_Body):
    userId: int = UserId


class UserDevices(_Body):
    userId: int = UserId


class EndDevice(UserDevices):
    # As /login's deviceId, and "": CIM's client (a login without one), which /devices lists as "".
    deviceId: str = Field(max_length=64, pattern=r"^[^\x00-\x1f\x7f]*$")


@dataclass(frozen=True)
class Access:
    """Who may call an endpoint under ``--auth token``: the user a body field names, with
    their token, and the operator (the admin key) if ``operator``. Paths not in ACCESS are open."""

    user_field: str | None  # the body field naming the user the call acts for; None: an operator call
    operator: bool = False


ACCESS = {
    "/p2pRoute": Access("userId"),
    "/groupRoute": Access("userId"),
    "/offLine": Access("userId", operator=True),
    "/fetchOfflineMsgs": Access("receiveUserId"),
    "/read": Access("userId"),
    "/history": Access("userId"),
    "/presence": Access("userId"),
    "/servers": Access(None, operator=True),
    "/devices": Access("userId", operator=True),
    "/devices/end": Access("userId", operator=True),
    **{path: Access("userId") for path in (
        "/group/create", "/group/addMembers", "/group/removeMembers", "/group/leave", "/group/members", "/group/list",
        "/group/rename", "/group/dissolve",
    )},
}

# Refusals of the caller also carry HTTP's own status, which proxies and HTTP clients
# understand; every other code comes back with HTTP 200, as in CIM.
HTTP_STATUS = {Status.UNAUTHORIZED: 401, Status.FORBIDDEN: 403, Status.RATE_LIMITED: 429}
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="cim"'}  # RFC 6750: what a 401 asks for


def answer(status: Status, data: Any = None, req_no: str | None = None, message: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"code": status.code_str, "message": message or status.message, "reqNo": req_no, "dataBody": data},
        status_code=HTTP_STATUS.get(status, 200),
        # The code as a header too: the metrics middleware (and any proxy) reads it without the body.
        headers={CODE_HEADER: status.code_str, **(CHALLENGE if status is Status.UNAUTHORIZED else {})},
    )


Handler = Callable[[RouteService, Any], Awaitable[JSONResponse]]


def endpoint(
    model: type[_Body] | None, handler: Handler, summary: str, access: Access | None = None
) -> Callable[[Request], Awaitable[JSONResponse]]:
    """Wrap a handler: parse and validate the JSON body into ``model``, check the caller
    against ``access`` (None: open), map errors to CIM codes."""

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
            if "authorization" in model.model_fields:
                raw["authorization"] = request.headers.get("authorization")
            try:
                body = model.model_validate(raw)
            except ValidationError as err:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()
                )
                return answer(Status.VALIDATION_FAIL, req_no=_req_no(raw), message=problems)
        try:
            if access is not None and service.tokens is not None:
                caller = service.authenticate(request.headers.get("authorization"))
                acting_for = None if access.user_field is None else getattr(body, access.user_field)
                service.authorize(caller, acting_for, access.operator)
            return await handler(service, body)
        except CimError as err:
            return answer(err.status, req_no=getattr(body, "reqNo", None), message=err.message)

    view.__doc__ = summary
    return view


def _req_no(raw: dict[str, Any]) -> str | None:
    value = raw.get("reqNo")
    return value if isinstance(value, str) else None


async def _register(service: RouteService, body: RegisterAccount) -> JSONResponse:
    user_id = await service.register(body.userName, body.password)
    return answer(Status.SUCCESS, {"userId": user_id, "userName": body.userName}, body.reqNo)


def _server(server: ServerInfo) -> dict[str, Any]:
    return {"ip": server.host, "cimServerPort": server.tcp_port, "httpPort": server.http_port}


async def _login(service: RouteService, body: Login) -> JSONResponse:
    grant = await service.login(body.userId, body.userName, body.password, body.deviceId or "", body.authorization)
    data = _server(grant.server)
    if grant.token is not None:  # --auth none answers exactly CIM's fields
        data["token"] = grant.token
    if grant.server.ws_url is not None:  # only a server with a WebSocket port adds a field to CIM's
        data["wsUrl"] = grant.server.ws_url
    return answer(Status.SUCCESS, data, body.reqNo)


async def _renew_token(service: RouteService, body: Login) -> JSONResponse:
    return answer(Status.SUCCESS, {"token": await service.renew_token(body.userId, body.userName, body.password)}, body.reqNo)


async def _p2p(service: RouteService, body: P2PRoute) -> JSONResponse:
    status = await service.send_private(body.userId, body.receiveUserId, body.msg, body.delaySeconds)
    return answer(status, None, body.reqNo)


async def _group(service: RouteService, body: GroupRoute) -> JSONResponse:
    await service.send_group(body.userId, body.msg, body.delaySeconds)
    return answer(Status.SUCCESS, None, body.reqNo)


async def _online(service: RouteService, _: None) -> JSONResponse:
    users = await service.online_users()
    return answer(Status.SUCCESS, [{"userId": u, "userName": n} for u, n in users])


async def _log_out_and_kick(service: RouteService, body: OffLine) -> JSONResponse:
    await service.log_out_and_kick(body.userId)
    return answer(Status.SUCCESS, None, body.reqNo)


async def _fetch_offline(service: RouteService, body: FetchOfflineMsgs) -> JSONResponse:
    count = await service.fetch_offline(body.receiveUserId)
    return answer(Status.SUCCESS, {"count": count}, body.reqNo)


async def _read(service: RouteService, body: Read) -> JSONResponse:
    await service.mark_read(body.userId, body.seq)
    return answer(Status.SUCCESS, None, body.reqNo)


async def _presence(service: RouteService, body: PresenceQuery) -> JSONResponse:
    states = await service.presence_states(body.userId, body.userIds)
    return answer(Status.SUCCESS, [{"userId": user_id, "online": online} for user_id, online in states.items()], body.reqNo)


async def _history(service: RouteService, body: History) -> JSONResponse:
    query = HistoryQuery(body.userId, body.peerId or 0, body.groupId or "", body.beforeSeq or 0, body.afterSeq or 0,
                         body.limit, body.keyword or "")
    return answer(Status.SUCCESS, (await service.history(query)).data_body(), body.reqNo)


async def _group_create(service: RouteService, body: GroupCreate) -> JSONResponse:
    group_id = await service.groups.create(body.userId, body.name, body.members)
    return answer(Status.SUCCESS, {"groupId": group_id}, body.reqNo)


async def _group_add(service: RouteService, body: GroupMembersChange) -> JSONResponse:
    added = await service.groups.add_members(body.userId, body.groupId, body.members)
    return answer(Status.SUCCESS, {"groupId": body.groupId, "added": added}, body.reqNo)


async def _group_remove(service: RouteService, body: GroupMembersChange) -> JSONResponse:
    removed = await service.groups.remove_members(body.userId, body.groupId, body.members)
    return answer(Status.SUCCESS, {"groupId": body.groupId, "removed": removed}, body.reqNo)


async def _group_leave(service: RouteService, body: GroupCall) -> JSONResponse:
    await service.groups.leave(body.userId, body.groupId)
    return answer(Status.SUCCESS, None, body.reqNo)


def _group_fields(info: GroupInfo) -> dict[str, Any]:
    return {"groupId": info.group_id, "name": info.name, "ownerId": info.owner_id, "memberCount": len(info.members)}


async def _group_members(service: RouteService, body: GroupCall) -> JSONResponse:
    info, names = await service.groups.members(body.userId, body.groupId)
    members = [{"userId": u, "userName": names[u]} for u in info.members]
    return answer(Status.SUCCESS, {**_group_fields(info), "members": members}, body.reqNo)


async def _group_list(service: RouteService, body: GroupList) -> JSONResponse:
    return answer(Status.SUCCESS, [_group_fields(info) for info in await service.groups.groups_of(body.userId)], body.reqNo)


async def _group_rename(service: RouteService, body: GroupRename) -> JSONResponse:
    await service.groups.rename(body.userId, body.groupId, body.name)
    return answer(Status.SUCCESS, None, body.reqNo)


async def _group_dissolve(service: RouteService, body: GroupCall) -> JSONResponse:
    await service.groups.dissolve(body.userId, body.groupId)
    return answer(Status.SUCCESS, None, body.reqNo)


def _device(device_id: str, login: DeviceLogin) -> dict[str, Any]:
    return {"deviceId": device_id, "serverId": login.server_id, **_server(ServerInfo.parse(login.server_id)),
            "since": login.since_ms}


async def _devices(service: RouteService, body: UserDevices) -> JSONResponse:
    devices = await service.devices(body.userId)
    return answer(Status.SUCCESS, {"devices": [_device(d, login) for d, login in devices.items()]}, body.reqNo)


async def _end_device(service: RouteService, body: EndDevice) -> JSONResponse:
    await service.end_device(body.userId, body.deviceId)
    return answer(Status.SUCCESS, None, body.reqNo)


async def _servers(service: RouteService, _: None) -> JSONResponse:
    return answer(Status.SUCCESS, [_server(s) for s in service.servers])


ENDPOINTS: list[tuple[str, list[str], type[_Body] | None, Handler, str]] = [
    ("/registerAccount", ["POST"], RegisterAccount, _register,
     "Register a user name and password; a taken name returns its id only with its password."),
    ("/login", ["POST"], Login, _login,
     "Log in: picks a cim-server and hands out a token (9100 wrong password or mismatch, 5000 repeat, 7100 none); "
     "wsUrl: the server's WebSocket endpoint, when it has one. With the user's token as the bearer (a reconnect) the "
     "token proves the user, not a password: no hash, and the same token back, its expiry unchanged (4001 once expired)."),
    ("/token", ["POST"], Login, _renew_token,
     "A new token for the user, with no login claim (for a connected client whose token expires; 9100 as /login)."),
    ("/p2pRoute", ["POST"], P2PRoute, _p2p, "Private message; 7000 when the receiver is offline (stored for later)."),
    ("/groupRoute", ["POST"], GroupRoute, _group, "Group message to every online user but the sender."),
    ("/onlineUser", ["GET", "POST"], None, _online, "Online users as [{userId, userName}]."),
    ("/offLine", ["POST"], OffLine, _log_out_and_kick, "Log a user out and close their connection."),
    ("/fetchOfflineMsgs", ["POST"], FetchOfflineMsgs, _fetch_offline,
     "Deliver stored messages to the online user, in order, once."),
    ("/read", ["POST"], Read, _read,
     "The user has read their inbox up to seq: the senders of those messages who asked get READ (MESSAGE_STATUS)."),
    ("/presence", ["POST"], PresenceQuery, _presence,
     "Whether each of userIds is online now (a device connected), as [{userId, online}]; 1 to 1000 ids, all registered."),
    ("/history", ["POST"], History, _history,
     "userId's own inbox, oldest first: the newest `limit` before beforeSeq (or after afterSeq), of a conversation "
     "(peerId or groupId; neither: all), containing keyword; {messages, hasMore, nextSeq, truncated}."),
    ("/servers", ["GET"], None, _servers, "The live cim-servers as [{ip, cimServerPort, httpPort}] (operator call)."),
    ("/devices", ["POST"], UserDevices, _devices,
     "userId's logged-in devices as {devices: [{deviceId, serverId, ip, cimServerPort, httpPort, since}]} "
     "(deviceId \"\": CIM's client; since: ms of the login)."),
    ("/devices/end", ["POST"], EndDevice, _end_device,
     "Log out one device of userId and end its connection (OFFLINE 9000, for good); 3000 for one not logged in."),
    ("/group/create", ["POST"], GroupCreate, _group_create,
     "Create a named group owned by userId, with the members named (and the owner); answers {groupId}."),
    ("/group/addMembers", ["POST"], GroupMembersChange, _group_add, "Owner only: add members; answers {groupId, added}."),
    ("/group/removeMembers", ["POST"], GroupMembersChange, _group_remove,
     "Owner only: remove members (not the owner); answers {groupId, removed}."),
    ("/group/leave", ["POST"], GroupCall, _group_leave, "Leave a group (its owner cannot: dissolve it)."),
    ("/group/members", ["POST"], GroupCall, _group_members,
     "Members only: {groupId, name, ownerId, memberCount, members: [{userId, userName}]}."),
    ("/group/list", ["POST"], GroupList, _group_list, "userId's groups as [{groupId, name, ownerId, memberCount}]."),
    ("/group/rename", ["POST"], GroupRename, _group_rename, "Owner only: rename the group."),
    ("/group/dissolve", ["POST"], GroupCall, _group_dissolve, "Owner only: delete the group (members get a notice)."),
]


def openapi(authenticated: bool = True) -> dict[str, Any]:
    """The OpenAPI document; ``authenticated`` (``--auth token``) declares the bearer
    checks of the ACCESS paths and their 401/403 answers."""
    envelope = {
        "type": "object",
        "properties": {
            "code": {"type": "string", "example": "9000"},
            "message": {"type": "string"},
            "reqNo": {"type": ["string", "null"]},
            "dataBody": {},
        },
    }
    content = {"application/json": {"schema": envelope}}
    paths: dict[str, Any] = {}
    for path, methods, model, _, summary in ENDPOINTS:
        for method in methods:
            op: dict[str, Any] = {
                "summary": summary,
                "responses": {
                    "200": {"description": "CIM envelope", "content": content},
                    "429": {"description": "4029: over the address's request or login rate (route.limits)",
                            "content": content},
                },
            }
            if model is not None:
                op["requestBody"] = {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}
            if authenticated and (path in ACCESS or path == "/login"):
                # /login: the password, or the user's token (a reconnect)
                op["security"] = [{"bearer": []}] if path in ACCESS else [{}, {"bearer": []}]
                op["responses"]["401"] = {"description": "4001: missing, invalid or expired token", "content": content}
                op["responses"]["403"] = {"description": "4003: a token that may not act for this user", "content": content}
            paths.setdefault(path, {})[method.lower()] = op
    spec: dict[str, Any] = {"openapi": "3.1.0", "info": {"title": "cim route", "version": "0.1.0"}, "paths": paths}
    if authenticated:
        bearer = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                  "description": "the token from /login (or one minted with the secret); the admin key for operator calls"}
        spec["components"] = {"securitySchemes": {"bearer": bearer}}
    return spec


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


async def _proto(request: Request) -> FileResponse:
    return FileResponse(PROTO_FILE, media_type="text/plain; charset=utf-8")


def _rate_limited(message: str) -> JSONResponse:
    return answer(Status.RATE_LIMITED, message=message)


async def _unroutable(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own 404 and 405, in CIM's envelope like every other answer (3000)."""
    status_code = exc.status_code if isinstance(exc, HTTPException) else 404
    what = "no such path" if status_code == 404 else f"method {request.method} not allowed on"
    response = answer(Status.VALIDATION_FAIL, message=f"{what} {request.url.path}")
    response.status_code = status_code
    return response


def create_app(service: RouteService) -> Starlette:
    routes = [
        Route(path, endpoint(model, handler, summary, ACCESS.get(path)), methods=methods)
        for path, methods, model, handler, summary in ENDPOINTS
    ]
    routes += [Route("/openapi.json", _openapi), Route("/docs", _docs), Route("/health", _health)]
    metrics = RouteMetrics()
    routes.append(metrics_route(metrics.registry))
    measured = Middleware(MeasuredRequests, metrics=metrics, paths=[r.path for r in routes])  # outermost: counts 429s too
    limits = Middleware(RouteLimits, config=service.config, refuse=_rate_limited)
    # The web client (cim/web) at /app, and the schema it parses, so it speaks this server's wire protocol
    # (its files are counted under the metrics' "other" path).
    web_client = [Route("/app/cim.proto", _proto), Mount("/app", StaticFiles(directory=STATIC_DIR, html=True), name="app")]
    app = Starlette(routes=[*routes, *web_client], middleware=[measured, limits],
                    exception_handlers={404: _unroutable, 405: _unroutable})
    app.state.service = service
    app.state.openapi = openapi(authenticated=service.tokens is not None)
    return app
