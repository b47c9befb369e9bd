"""Development mode plays both web login flows offline, over real HTTP: the emulator's own
official account and clients, its authorize page, its landing page, and its code image."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qs, urlsplit

import requests

from issuer.config import DEVELOPMENT_H5_CLIENT, DEVELOPMENT_WEB_CLIENT
from issuer.oauth.pkce import s256

TIMEOUT = 10


def query_of(url: str) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(url).query).items()}


def test_h5_login_in_development_mode(dev_server: str) -> None:
    verifier = secrets.token_urlsafe(48)
    done = f"{dev_server}/_wechat/dev/web-done"
    started = requests.get(
        f"{dev_server}/auth/authorize",
        params={
            "response_type": "code",
            "client_id": DEVELOPMENT_H5_CLIENT,
            "redirect_uri": done,
            "state": "dev",
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    assert started.status_code == 302, started.text
    page = started.headers["Location"].split("#")[0]
    assert page.startswith(f"{dev_server}/_wechat/connect/oauth2/authorize?")
    assert "Test user" in requests.get(page, timeout=TIMEOUT).text
    # Allow, and follow every redirect as a browser does: to the landing page.
    landed = requests.post(
        page, data={**query_of(page), "user": "alice", "action": "consent"}, timeout=TIMEOUT
    )
    assert landed.status_code == 200
    assert landed.url.startswith(done + "?")
    code = query_of(landed.url)["code"]
    assert code in landed.text
    tokens = requests.post(
        f"{dev_server}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": done,
            "client_id": DEVELOPMENT_H5_CLIENT,
            "code_verifier": verifier,
        },
        timeout=TIMEOUT,
    )
    assert tokens.status_code == 200, tokens.text
    # The same test user through the mini-program is the same user (one unionid).
    code = requests.post(f"{dev_server}/_wechat/dev/wx.login", json={"user": "alice"},
                         timeout=TIMEOUT).json()["code"]  # fmt: skip
    mini = requests.post(f"{dev_server}/auth/login", json={"code": code}, timeout=TIMEOUT)
    assert mini.json()["user_id"] == tokens.json()["user_id"]


def test_scan_login_in_development_mode(dev_server: str) -> None:
    verifier = secrets.token_urlsafe(48)
    created = requests.post(
        f"{dev_server}/auth/scan",
        json={"client_id": DEVELOPMENT_WEB_CLIENT, "code_challenge": s256(verifier)},
        timeout=TIMEOUT,
    ).json()
    image = requests.get(created["qrcode_url"], timeout=TIMEOUT)
    assert image.headers["Content-Type"] == "image/png"
    assert created["ticket"].encode() in image.content
    code = requests.post(f"{dev_server}/_wechat/dev/wx.login", json={"user": "bob"},
                         timeout=TIMEOUT).json()["code"]  # fmt: skip
    pair = requests.post(f"{dev_server}/auth/login", json={"code": code}, timeout=TIMEOUT).json()
    bearer = {"Authorization": f"Bearer {pair['access_token']}"}
    ticket = created["ticket"]
    requests.post(f"{dev_server}/auth/scan/{ticket}/scanned", headers=bearer, timeout=TIMEOUT)
    requests.post(
        f"{dev_server}/auth/scan/{ticket}/confirm",
        json={"approve": True},
        headers=bearer,
        timeout=TIMEOUT,
    )
    seen = requests.get(
        f"{dev_server}/auth/scan/{ticket}", params={"since": "scanned"}, timeout=TIMEOUT
    ).json()
    assert seen["status"] == "confirmed"
    tokens = requests.post(
        f"{dev_server}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": seen["code"],
            "client_id": DEVELOPMENT_WEB_CLIENT,
            "code_verifier": verifier,
        },
        timeout=TIMEOUT,
    )
    assert tokens.json()["user_id"] == pair["user_id"]
