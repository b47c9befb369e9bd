"""The OpenAPI document (issuer/web/openapi.json): well-formed, served, and true to the app.

Without a validator dependency: structural checks of the document, route parity with the
app's URL map, and real responses checked against the documented schemas by a small
JSON-Schema subset (``type`` with lists, ``required``, ``properties``, ``enum``, ``items``,
``additionalProperties``, ``allOf``, ``$ref``, ``pattern``, ``minLength``, ``maxLength``).
"""

from __future__ import annotations

import json
import re
from importlib import metadata, resources
from typing import Any

import pytest

from tests.conftest import APPID

DOCUMENT_BYTES = resources.files("issuer.web").joinpath("openapi.json").read_bytes()
DOC: dict[str, Any] = json.loads(DOCUMENT_BYTES)

METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
ERROR_REF = "#/components/schemas/Error"
TYPES: dict[str, Any] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}
ANNOTATIONS = {"description", "format", "title", "examples", "deprecated"}
ASSERTIONS = {
    "$ref",
    "allOf",
    "type",
    "enum",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "pattern",
    "minLength",
    "maxLength",
}


# -- helpers


def lookup(ref: str) -> dict[str, Any]:
    """The node a local ``$ref`` (``#/a/b``) points at."""
    assert ref.startswith("#/"), ref
    target: Any = DOC
    for part in ref[2:].split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    assert isinstance(target, dict), ref
    return target


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    """Follow ``$ref``s until a node without one."""
    while "$ref" in node:
        node = lookup(node["$ref"])
    return node


def check(schema: dict[str, Any], value: Any, where: str = "$") -> None:
    """Assert that ``value`` validates against ``schema`` (the subset above)."""
    unknown = set(schema) - ASSERTIONS - ANNOTATIONS
    assert not unknown, f"{where}: the checker does not know {sorted(unknown)}"
    if "$ref" in schema:
        check(resolve(schema), value, where)
    for part in schema.get("allOf", []):
        check(part, value, where)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(TYPES[name](value) for name in types), f"{where}: {value!r} is not {types}"
    if "enum" in schema:
        assert value in schema["enum"], f"{where}: {value!r} not in {schema['enum']}"
    if isinstance(value, str):
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{where}: {value!r} !~ {schema['pattern']}"
        assert len(value) >= schema.get("minLength", 0), f"{where}: too short"
        assert len(value) <= schema.get("maxLength", len(value)), f"{where}: too long"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{where}: {name} is required"
        properties = schema.get("properties", {})
        for name, item in value.items():
            if name in properties:
                check(properties[name], item, f"{where}.{name}")
            elif schema.get("additionalProperties") is False:
                raise AssertionError(f"{where}: {name} is not a documented property")
            elif isinstance(schema.get("additionalProperties"), dict):
                check(schema["additionalProperties"], item, f"{where}.{name}")
    if isinstance(value, list) and "items" in schema:
        for index, item in enumerate(value):
            check(schema["items"], item, f"{where}[{index}]")


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in DOC["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def documented_response(path: str, method: str, status: int) -> dict[str, Any]:
    responses = DOC["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path} does not document {status}"
    return resolve(responses[str(status)])


def assert_documented(response: Any, path: str, method: str, response_doc: Any = None) -> None:
    """The real ``response`` matches what the document says for its status: the required
    headers with their schemas, and the body against the schema of its media type."""
    doc = response_doc or documented_response(path, method, response.status_code)
    for name, header in doc.get("headers", {}).items():
        header = resolve(header)
        if header.get("required"):
            assert name in response.headers, f"{method} {path} {response.status_code}: no {name}"
        if name in response.headers:
            check(header["schema"], response.headers[name], f"header {name}")
    content = doc.get("content")
    if not content:
        assert response.data == b"", f"{method} {path} {response.status_code}: a body"
        return
    assert response.mimetype in content, (response.mimetype, list(content))
    check(content[response.mimetype]["schema"], json.loads(response.data))


def flask_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- (a) the document, and how it is served


def test_document_is_openapi_3_1():
    assert DOC["openapi"] == "3.1.0"
    assert DOC["info"]["title"] == "issuer"
    assert DOC["info"]["version"] == metadata.version("issuer")
    assert DOC["paths"]
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["bearerAuth"] == {**schemes["bearerAuth"], "type": "http", "scheme": "bearer"}
    assert schemes["bearerAuth"]["bearerFormat"] == "JWT"
    error = DOC["components"]["schemas"]["Error"]
    assert set(error["required"]) == {"error", "error_description"}
    assert "request_id" in error["properties"]


def test_document_is_well_formed():
    """Every ``$ref`` resolves, every operation has an id and responses, ids are unique,
    every response has a description, and only ``/me``, ``/me/avatar``, ``/wechat/*`` and
    the phone's scan steps require a Bearer."""

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [ref for value in node.values() for ref in refs(value)]
        if isinstance(node, list):
            return [ref for value in node for ref in refs(value)]
        return []

    for ref in refs(DOC):
        lookup(ref)
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations():
        assert operation["responses"], (method, path)
        for status, response in operation["responses"].items():
            assert re.fullmatch(r"[1-5]\d\d", status), (method, path, status)
            assert resolve(response)["description"], (method, path, status)
            assert "X-Request-ID" in resolve(response)["headers"], (method, path, status)
        needs_bearer = (
            path in ("/me", "/me/avatar")
            or path.startswith("/wechat/")
            # The phone's half of a PC scan login (web login).
            or path in ("/auth/scan/{ticket}/scanned", "/auth/scan/{ticket}/confirm")
        )
        security = operation.get("security", DOC.get("security", []))
        assert (security == [{"bearerAuth": []}]) == needs_bearer, (method, path)


def test_document_states_the_contract_details():
    """Bodies and headers SPEC §2 promises, present in the document."""
    for path, method, operation in operations():
        responses = {status: resolve(item) for status, item in operation["responses"].items()}
        if "requestBody" in operation:
            types = set(operation["requestBody"]["content"])
            form = "application/x-www-form-urlencoded"
            expected = (
                {"application/json", form} if path.startswith("/auth/") else {"application/json"}
            )
            if path == "/me/avatar":  # what wx.uploadFile sends, or the image itself
                expected = {"multipart/form-data", "image/*"}
            assert types == expected, (method, path)
        for status, response in responses.items():
            headers = response.get("headers", {})
            if status == "401":
                assert "WWW-Authenticate" in headers, (method, path)
            if status == "429":
                assert "Retry-After" in headers, (method, path)
        if path in {"/auth/login", "/auth/refresh"}:
            token = responses["200"]
            assert token["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/TokenResponse"
            }
            assert {"Cache-Control", "Pragma"} <= set(token["headers"]), path
    assert "ETag" in DOC["paths"]["/.well-known/jwks.json"]["get"]["responses"]["200"]["headers"]


def test_document_is_served_byte_equal_with_etag(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.data == DOCUMENT_BYTES
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    etag = response.headers["ETag"]
    assert_documented(response, "/openapi.json", "get")
    cached = client.get("/openapi.json", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.data == b""
    assert_documented(cached, "/openapi.json", "get")
    assert client.get("/openapi.json", headers={"If-None-Match": '"other"'}).status_code == 200


# -- (b) route parity


def test_every_route_is_documented_and_every_documented_operation_exists(app_factory):
    app = app_factory(metrics=True)  # every optional route on: /metrics too
    routes = {
        (flask_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    documented = {(path, method) for path, method, _ in operations()}
    assert routes - documented == set(), "routes without documentation"
    assert documented - routes == set(), "documented operations without a route"


def test_flask_path_conversion():
    assert flask_path("/users/<int:user_id>/keys/<kid>") == "/users/{user_id}/keys/{kid}"


# -- (c) errors use the Error schema


def uses_error_schema(schema: dict[str, Any]) -> bool:
    """``schema`` is the Error schema, or (through ``$ref``s) an ``allOf`` that includes it."""
    if schema.get("$ref") == ERROR_REF:
        return True
    if "$ref" in schema:
        return uses_error_schema(lookup(schema["$ref"]))
    return any(uses_error_schema(part) for part in schema.get("allOf", []))


@pytest.mark.parametrize(
    ("path", "method", "operation"), operations(), ids=[f"{m} {p}" for p, m, _ in operations()]
)
def test_error_responses_reference_the_error_schema(path, method, operation):
    for status, response in operation["responses"].items():
        if int(status) < 400:
            continue
        content = resolve(response)["content"]
        # A browser landing on web login's pages gets a readable page (SPEC §11) when it
        # asks for HTML; every other client the JSON error.
        browser = {"text/html"} if path in ("/auth/authorize", "/auth/wechat/callback") else set()
        assert set(content) - browser == {"application/json"}, (method, path, status)
        assert uses_error_schema(content["application/json"]["schema"]), (method, path, status)
        assert "Cache-Control" in resolve(response)["headers"], (method, path, status)


def test_shared_error_responses_reference_the_error_schema():
    for name, response in DOC["components"]["responses"].items():
        assert uses_error_schema(response["content"]["application/json"]["schema"]), name


# -- (d) real responses validate against the document


def test_token_flow_responses_match(client, wechat):
    code = wechat.mint_code(APPID, "olga")
    response = client.post("/auth/login", json={"code": code})
    assert response.status_code == 200
    assert_documented(response, "/auth/login", "post")
    pair = response.get_json()

    refreshed = client.post("/auth/refresh", data={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200
    assert_documented(refreshed, "/auth/refresh", "post")
    pair = refreshed.get_json()

    me = client.get("/me", headers=bearer(pair["access_token"]))
    assert me.status_code == 200
    assert_documented(me, "/me", "get")
    assert me.get_json()["phone_number"] is None  # a nullable field, really null

    session = client.get("/wechat/session", headers=bearer(pair["access_token"]))
    assert session.status_code == 200
    assert_documented(session, "/wechat/session", "get")

    decrypted = client.post(
        "/wechat/decrypt",
        json=wechat.user_data(APPID, "olga"),
        headers=bearer(pair["access_token"]),
    )
    assert decrypted.status_code == 200
    assert_documented(decrypted, "/wechat/decrypt", "post")

    phone = client.post(
        "/wechat/phone",
        json={"code": wechat.mint_phone_code(APPID, "olga")},
        headers=bearer(pair["access_token"]),
    )
    assert phone.status_code == 200
    assert_documented(phone, "/wechat/phone", "post")
    me = client.get("/me", headers=bearer(pair["access_token"]))
    assert me.get_json()["phone_number"] is not None
    assert_documented(me, "/me", "get")

    logout = client.post("/auth/logout", headers=bearer(pair["access_token"]))
    assert logout.status_code == 204
    assert_documented(logout, "/auth/logout", "post")


def test_discovery_and_health_responses_match(client):
    jwks = client.get("/.well-known/jwks.json")
    assert jwks.status_code == 200
    assert_documented(jwks, "/.well-known/jwks.json", "get")
    cached = client.get("/.well-known/jwks.json", headers={"If-None-Match": jwks.headers["ETag"]})
    assert cached.status_code == 304
    assert_documented(cached, "/.well-known/jwks.json", "get")
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        response = client.get(path)
        assert response.status_code == 200
        assert_documented(response, path, "get")
    for path in ("/healthz", "/readyz"):
        response = client.get(path)
        assert response.status_code == 200
        assert_documented(response, path, "get")


def test_readyz_503_matches(app, client):
    class Broken:
        def ping(self):
            from issuer.store import StoreUnavailable

            raise StoreUnavailable("down")

    service = app.extensions["issuer"]
    store, service.store = service.store, Broken()
    try:
        response = client.get("/readyz")
    finally:
        service.store = store
    assert response.status_code == 503
    assert_documented(response, "/readyz", "get")


def test_error_responses_match(client, wechat):
    invalid = client.post("/auth/login", json={})
    assert invalid.status_code == 400
    assert invalid.get_json()["error"] == "invalid_request"
    assert_documented(invalid, "/auth/login", "post")

    missing = client.get("/me")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    assert_documented(missing, "/me", "get")

    bad = client.get("/me", headers=bearer("not-a-token"))
    assert bad.status_code == 401
    assert bad.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert_documented(bad, "/me", "get")

    grant = client.post("/auth/refresh", json={"refresh_token": "rt_nothing"})
    assert grant.status_code == 400
    assert grant.get_json()["error"] == "invalid_grant"
    assert_documented(grant, "/auth/refresh", "post")

    large = client.post("/auth/login", json={"code": "x" * 20_000})
    assert large.status_code == 413
    assert_documented(large, "/auth/login", "post")

    not_found = client.get("/no/such/path")
    assert not_found.status_code == 404
    assert not_found.get_json()["error"] == "not_found"
    assert_documented(not_found, "", "", DOC["components"]["responses"]["NotFound"])

    not_allowed = client.get("/auth/login")
    assert not_allowed.status_code == 405
    assert_documented(not_allowed, "", "", DOC["components"]["responses"]["MethodNotAllowed"])


def test_server_error_matches(app, client, wechat, monkeypatch):
    pair = client.post("/auth/login", json={"code": wechat.mint_code(APPID, "ursula")}).get_json()

    def fail(access_token):
        raise RuntimeError("boom")

    monkeypatch.setattr(app.extensions["issuer"], "me", fail)
    response = client.get("/me", headers=bearer(pair["access_token"]))
    assert response.status_code == 500
    assert response.get_json()["request_id"] == response.headers["X-Request-ID"]
    assert_documented(response, "/me", "get")


def test_rate_limit_response_matches(app_factory, wechat):
    client = app_factory(ratelimit_login="1/minute").test_client()
    client.post("/auth/login", json={"code": wechat.mint_code(APPID, "rita")})
    limited = client.post("/auth/login", json={"code": wechat.mint_code(APPID, "rita")})
    assert limited.status_code == 429
    assert limited.get_json()["error"] == "slow_down"
    assert_documented(limited, "/auth/login", "post")
