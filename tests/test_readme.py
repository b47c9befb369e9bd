"""The README's code for service developers runs as printed, against a live issuer.

The walkthrough and the curl examples are run by ``test_dev.py``; here the Python snippets of
the section on verifying tokens are executed with the issuer URL pointed at a real loopback
server, and must accept a real access token and refuse a tampered one.
"""

from __future__ import annotations

import re
from typing import Any

import jwt
import pytest
from flask import Flask

from issuer.wechat.emulator import WeChatEmulator

from .conftest import APPID, ROOT

README_URL = "https://login.example.com"
SECTION = "## For service developers"


def python_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION) :]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


@pytest.fixture
def issuer_url(self_named_server: str) -> str:
    return self_named_server


def access_token(url: str, wechat: WeChatEmulator) -> str:
    import requests

    code = wechat.mint_code(APPID, "readme-reader")
    response = requests.post(f"{url}/auth/login", json={"code": code}, timeout=10)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def tampered(token: str) -> str:
    head, body, signature = token.split(".")
    return f"{head}.{body}.{signature[:-4]}AAAA"


def test_the_readme_has_the_snippets() -> None:
    blocks = python_blocks()
    assert len(blocks) == 2, "the PyJWT snippet and the issuer.verify snippet"
    assert all(README_URL in block for block in blocks)


def test_the_pyjwt_snippet_verifies_a_live_issuers_token(
    issuer_url: str, wechat: WeChatEmulator
) -> None:
    namespace: dict[str, Any] = {}
    exec(python_blocks()[0].replace(README_URL, issuer_url), namespace)
    token = access_token(issuer_url, wechat)
    claims = namespace["verify"](token)
    assert claims["client_id"] == APPID
    assert claims["iss"] == issuer_url
    with pytest.raises(jwt.InvalidTokenError):
        namespace["verify"](tampered(token))


def test_the_issuer_verify_snippet_guards_a_flask_route(
    issuer_url: str, wechat: WeChatEmulator
) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_service"}
    code = python_blocks()[1].replace(README_URL, issuer_url)
    exec(code, namespace)
    service: Flask = namespace["app"]
    client = service.test_client()
    token = access_token(issuer_url, wechat)

    accepted = client.get("/orders", headers={"Authorization": f"Bearer {token}"})
    assert accepted.status_code == 200
    assert (
        accepted.get_json()["user"] == jwt.decode(token, options={"verify_signature": False})["sub"]
    )
    refused = client.get("/orders", headers={"Authorization": f"Bearer {tampered(token)}"})
    assert refused.status_code == 401
    assert client.get("/orders").status_code == 401
