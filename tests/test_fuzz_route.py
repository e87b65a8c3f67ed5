"""Schemathesis against the route's OpenAPI (``/openapi.json`` as served), in both auth modes.

A route and a cim-server run on embedded backends on real loopback ports, in a thread
of their own (schemathesis calls them synchronously, with requests). Every operation
is called with generated bodies, valid and not; each call carries a credential of a
kind hypothesis draws: none, garbage, an expired token, one signed with another secret,
the token of the user the body names, another user's, or the admin key. Checks: no
5xx; every answer is CIM's envelope; HTTP 200 for business errors, 401/403/429 only
for 4001/4003/4029; under ``--auth token`` nothing that acts for a user gets past the
route without that user's token (or the admin key, where an operator may call).

Bounded for CI: 25 examples per operation and mode, a few seconds in all.
"""

from __future__ import annotations

import asyncio
import enum
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from cim.auth import Tokens
from cim.auth.tokens import ALGORITHM
from cim.backends.memory import MemoryHub
from cim.config import Config
from cim.run import Running, start
from route.app import ACCESS, ENDPOINTS, Access
from tests.conftest import new_secret, stack_config

# The HTTP status each refusal of the caller comes with; every other code is HTTP 200.
HTTP_STATUS = {"4001": 401, "4003": 403, "4029": 429}
INVALID_ARGUMENT = "3000"  # a body is checked before its caller: a bad one is refused as such
MODELS = {path: model for path, _, model, _, _ in ENDPOINTS}  # each path's body, as the route reads it


class Credential(enum.Enum):
    """What a call presents as ``Authorization: Bearer``."""

    MISSING = "no Authorization header"
    GARBAGE = "not a JWT"
    EXPIRED = "an expired token of the user the body names"
    FOREIGN = "a token signed with another secret"
    OWN = "a token of the user the body names"
    OTHER = "a token of another user"
    ADMIN = "the admin key"


class FuzzedRoute:
    """A route and a cim-server on an event loop in a thread of their own, for
    synchronous callers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzzed-route", daemon=True)
        self.running: Running | None = None

    def __enter__(self) -> FuzzedRoute:
        self.thread.start()
        self.running = self._run(start(self.config, {"server", "route"}, MemoryHub()))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.running is not None:
                self._run(self.running.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    @property
    def url(self) -> str:
        assert self.running is not None and self.running.route_http is not None
        return f"http://127.0.0.1:{self.running.route_http.port}"


@pytest.fixture(scope="module", params=["token", "none"])
def fuzzed_route(request: pytest.FixtureRequest) -> Iterator[FuzzedRoute]:
    config = stack_config(auth=request.param, admin_key=new_secret())
    with FuzzedRoute(config) as route:
        yield route


@pytest.fixture(scope="module")
def route_schema(fuzzed_route: FuzzedRoute) -> schemathesis.BaseSchema:
    """The schema the route serves (with the bearer scheme under ``--auth token``)."""
    # Credentials are this test's to choose (see Credential): schemathesis makes up none.
    config = schemathesis.Config.from_dict({"generation": {"with-security-parameters": False}})
    return schemathesis.openapi.from_url(f"{fuzzed_route.url}/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("route_schema")
Case = schemathesis.Case[Any]  # of any operation: its type parameters are schemathesis internals


TOKEN_LOGIN = Access("userId")  # /login with a bearer: only the user's own token proves them


def acting_for(case: Case, access: Access | None) -> int:
    """The user the body names for ``access``, read as the route reads it (2.0 is user 2);
    1 when it names none."""
    model = MODELS.get(case.path)
    if access is None or access.user_field is None or model is None:
        return 1
    try:
        return int(getattr(model.model_validate(case.body), access.user_field))
    except ValidationError:
        return 1


def bearer(route: FuzzedRoute, credential: Credential, user_id: int) -> str | None:
    """The Authorization header's value for ``credential`` (None: no header)."""
    secret = route.config.secret
    assert secret is not None
    other_secret = new_secret()
    tokens = Tokens(secret, route.config.token_ttl)
    value = {
        Credential.MISSING: None,
        Credential.GARBAGE: "not-a-token",
        Credential.EXPIRED: jwt.encode({"sub": str(user_id), "exp": int(time.time()) - 3600}, secret, ALGORITHM),
        Credential.FOREIGN: Tokens(other_secret, route.config.token_ttl).mint(user_id),
        Credential.OWN: tokens.mint(user_id),
        Credential.OTHER: tokens.mint(user_id + 1 if user_id < 2**63 - 1 else 1),
        Credential.ADMIN: route.config.admin_key,
    }[credential]
    return None if value is None else f"Bearer {value}"


def refusal(credential: Credential, access: Access) -> str | None:
    """The code a route under ``--auth token`` must refuse the caller with, None if the
    credential may make the call."""
    if credential in (Credential.MISSING, Credential.GARBAGE, Credential.EXPIRED, Credential.FOREIGN):
        return "4001"
    if credential is Credential.ADMIN:
        return None if access.operator else "4003"
    if credential is Credential.OWN and access.user_field is not None:
        return None
    return "4003"


def check_envelope(response: schemathesis.Response, case: Case) -> str:
    """CIM's envelope, with the HTTP status its code calls for; returns the code."""
    assert response.status_code in (200, *HTTP_STATUS.values()), f"HTTP {response.status_code}: {response.text}"
    payload = response.json()
    assert isinstance(payload, dict) and set(payload) == {"code", "message", "reqNo", "dataBody"}, payload
    code, message, req_no = payload["code"], payload["message"], payload["reqNo"]
    assert isinstance(code, str) and code.isdecimal() and isinstance(message, str) and message, payload
    assert response.status_code == HTTP_STATUS.get(code, 200), f"code {code} with HTTP {response.status_code}"
    if req_no is not None:  # echoed, never made up
        assert isinstance(case.body, dict) and req_no == case.body.get("reqNo"), payload
    return code


@schema.parametrize()
@schema.given(credential=st.sampled_from(Credential))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_every_answer_is_cims_envelope(case: Case, credential: Credential, fuzzed_route: FuzzedRoute) -> None:
    access = ACCESS.get(case.path)
    login = case.path == "/login"  # a bearer is optional there: none (the password) or the user's own token
    value = bearer(fuzzed_route, credential, acting_for(case, TOKEN_LOGIN if login else access))
    case.headers.pop("Authorization", None)  # the credential drawn, not one schemathesis made up
    if value is not None:
        case.headers["Authorization"] = value
    response = case.call_and_validate(
        base_url=fuzzed_route.url,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
    code = check_envelope(response, case)
    if code == "4029":
        return  # rate-limited before anything else was looked at
    if fuzzed_route.config.auth == "none" or (access is None and not (login and credential is not Credential.MISSING)):
        assert code not in ("4001", "4003"), f"{case.path} is open here, yet refused {credential.name}: {response.text}"
        return
    expected = refusal(credential, access or TOKEN_LOGIN)
    if expected is None:
        assert code not in ("4001", "4003"), f"{credential.name} may call {case.path}: {response.text}"
    else:
        assert code in (expected, INVALID_ARGUMENT), f"{credential.name} on {case.path}: {response.text}"
