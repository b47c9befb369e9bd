"""PC scan login, end to end over HTTP: a ticket, its mini-program code (a real PNG from the
loopback WeChat), the phone's scanned/confirm with its Bearer, the PC's long-poll, and the
PKCE-bound code exchanged at /auth/token."""

from __future__ import annotations

import secrets
import threading
import zlib
from typing import Any

import jwt
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from issuer.oauth.pkce import s256
from issuer.wechat.emulator import Fault, WeChatEmulator
from tests import test_weblogin_h5 as h5
from tests.conftest import FakeClock, ServerThread
from tests.test_weblogin_h5 import MP, Browser, mini_program_login

# The H5 module's fixtures: the loopback WeChat with both apps, and the app with its clients.
web_wechat = h5.web_wechat
emulator = h5.emulator
web_app = h5.web_app
http = h5.http
browser = h5.browser


def png_text(png: bytes) -> dict[str, str]:
    """The tEXt chunks of a PNG, after checking its signature and every chunk's CRC."""
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    texts, at = {}, 8
    while at < len(png):
        length = int.from_bytes(png[at : at + 4], "big")
        kind, data = png[at + 4 : at + 8], png[at + 8 : at + 8 + length]
        crc = int.from_bytes(png[at + 8 + length : at + 12 + length], "big")
        assert zlib.crc32(kind + data) == crc
        if kind == b"tEXt":
            key, _, value = data.partition(b"\x00")
            texts[key.decode()] = value.decode()
        at += 12 + length
    return texts


class PC:
    """A PC page: its PKCE pair, its ticket, its polls."""

    def __init__(self, http: FlaskClient, client_id: str = "shop-pc") -> None:
        self.http = http
        self.verifier = secrets.token_urlsafe(48)
        created = http.post(
            "/auth/scan", json={"client_id": client_id, "code_challenge": s256(self.verifier)}
        )
        assert created.status_code == 200, created.get_json()
        assert created.headers["Cache-Control"] == "no-store"
        self.created: dict[str, Any] = created.get_json()
        self.ticket: str = self.created["ticket"]

    def poll(self, since: str = "pending", wait: float = 0) -> dict[str, Any]:
        answer = self.http.get(
            f"/auth/scan/{self.ticket}", query_string={"since": since, "wait": wait}
        )
        assert answer.status_code == 200, answer.get_json()
        body: dict[str, Any] = answer.get_json()
        return body

    def exchange(self, code: str, **change: str) -> Any:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "client_id": "shop-pc",
            "code_verifier": self.verifier,
            **change,
        }
        return self.http.post("/auth/token", data=form)


class Phone:
    """The logged-in mini-program that scans the code."""

    def __init__(self, http: FlaskClient, emulator: WeChatEmulator, user: str) -> None:
        self.http = http
        self.pair = mini_program_login(http, emulator, user)

    def send(self, ticket: str, step: str, body: dict[str, Any] | None = None) -> Any:
        return self.http.post(
            f"/auth/scan/{ticket}/{step}",
            json=body if body is not None else {},
            headers={"Authorization": f"Bearer {self.pair['access_token']}"},
        )


@pytest.fixture
def phone(http: FlaskClient, emulator: WeChatEmulator) -> Phone:
    return Phone(http, emulator, "scan-" + secrets.token_hex(4))


@pytest.mark.stores
def test_the_whole_scan_flow(http: FlaskClient, phone: Phone, emulator: WeChatEmulator) -> None:
    pc = PC(http)
    assert pc.created["expires_in"] == 300
    assert pc.created["interval"] >= 1
    assert len(pc.ticket) <= 32
    assert pc.created["qrcode_url"] == f"https://issuer.test/auth/scan/{pc.ticket}/qrcode"
    image = http.get(f"/auth/scan/{pc.ticket}/qrcode")
    assert image.status_code == 200
    assert image.mimetype == "image/png"
    assert png_text(image.data) == {"scene": pc.ticket, "page": "pages/scan/index"}
    assert pc.poll() == {"status": "pending", "expires_in": 300, "interval": 2}

    scanned = phone.send(pc.ticket, "scanned")
    assert scanned.status_code == 200, scanned.get_json()
    assert scanned.get_json() == {"status": "scanned", "client_id": "shop-pc"}
    assert pc.poll()["status"] == "scanned"
    confirmed = phone.send(pc.ticket, "confirm", {"approve": True})
    assert confirmed.get_json() == {"status": "confirmed"}

    seen = pc.poll(since="scanned")
    assert seen["status"] == "confirmed"
    again = pc.poll(since="scanned")
    assert "code" not in again  # handed out once
    tokens = pc.exchange(seen["code"])
    assert tokens.status_code == 200, tokens.get_json()
    pair = tokens.get_json()
    assert pair["user_id"] == phone.pair["user_id"]
    claims = jwt.decode(pair["access_token"], options={"verify_signature": False})
    assert claims["client_id"] == "shop-pc"
    me = http.get("/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.get_json()["appid"] == MP
    assert pc.exchange(seen["code"]).get_json()["error"] == "invalid_grant"  # single use
    assert phone.send(pc.ticket, "confirm", {"approve": True}).get_json()["error"] == (
        "invalid_grant"
    )


def test_the_code_is_bound_to_the_pc_that_made_the_ticket(http: FlaskClient, phone: Phone) -> None:
    pc = PC(http)
    phone.send(pc.ticket, "scanned")
    phone.send(pc.ticket, "confirm", {"approve": True})
    code = pc.poll(since="scanned")["code"]
    other = PC(http)
    stolen = other.exchange(code)
    assert stolen.status_code == 400
    assert stolen.get_json()["error"] == "invalid_grant"


def test_the_qrcode_is_made_once_per_ticket(
    http: FlaskClient,
    emulator: WeChatEmulator,
) -> None:
    pc = PC(http)
    emulator.calls.clear()
    first = http.get(f"/auth/scan/{pc.ticket}/qrcode").data
    second = http.get(f"/auth/scan/{pc.ticket}/qrcode").data
    assert first == second
    assert emulator.calls.count("/wxa/getwxacodeunlimit") == 1


def test_a_rejected_server_token_is_replaced_once(
    http: FlaskClient,
    emulator: WeChatEmulator,
) -> None:
    http.get(f"/auth/scan/{PC(http).ticket}/qrcode")  # a server token is cached
    emulator.revoke_server_token(MP)
    pc = PC(http)
    image = http.get(f"/auth/scan/{pc.ticket}/qrcode")
    assert image.status_code == 200
    assert png_text(image.data)["scene"] == pc.ticket


@pytest.mark.parametrize(("errcode", "status"), [(41030, 502), (45009, 503), (-1, 200)])
def test_wechat_errors_on_the_qrcode(
    http: FlaskClient,
    emulator: WeChatEmulator,
    errcode: int,
    status: int,
) -> None:
    pc = PC(http)
    emulator.inject(Fault(errcode=errcode, path="/wxa/getwxacodeunlimit"))
    answer = http.get(f"/auth/scan/{pc.ticket}/qrcode")
    if errcode == -1:
        # Busy is not retried for an image: the PC asks again.
        assert answer.status_code == 503
        assert http.get(f"/auth/scan/{pc.ticket}/qrcode").status_code == 200
        return
    assert answer.status_code == status
    assert answer.get_json()["error"]


def test_denied(http: FlaskClient, phone: Phone) -> None:
    pc = PC(http)
    phone.send(pc.ticket, "scanned")
    assert phone.send(pc.ticket, "confirm", {"approve": False}).get_json() == {"status": "denied"}
    seen = pc.poll(since="scanned")
    assert seen["status"] == "denied"
    assert "code" not in seen
    assert phone.send(pc.ticket, "confirm", {"approve": True}).get_json()["error"] == (
        "invalid_grant"
    )


@pytest.mark.stores
def test_expired(http: FlaskClient, phone: Phone, clock: FakeClock) -> None:
    pc = PC(http)
    clock.advance(300)
    assert pc.poll()["status"] == "expired"
    refused = phone.send(pc.ticket, "scanned")
    assert refused.status_code == 400
    assert "expired" in refused.get_json()["error_description"]
    assert http.get(f"/auth/scan/{pc.ticket}/qrcode").status_code == 404


@pytest.mark.stores
def test_confirm_needs_a_scan_by_the_same_user(
    http: FlaskClient,
    phone: Phone,
    emulator: WeChatEmulator,
) -> None:
    pc = PC(http)
    assert phone.send(pc.ticket, "confirm", {"approve": True}).get_json()["error"] == (
        "invalid_grant"
    )
    phone.send(pc.ticket, "scanned")
    intruder = Phone(http, emulator, "intruder-" + secrets.token_hex(4))
    assert intruder.send(pc.ticket, "scanned").get_json()["error"] == "invalid_grant"
    assert intruder.send(pc.ticket, "confirm", {"approve": True}).get_json()["error"] == (
        "invalid_grant"
    )
    assert phone.send(pc.ticket, "scanned").status_code == 200  # a retry of the scan


def test_scanning_needs_the_sites_mini_program(
    http: FlaskClient,
    browser: Browser,
) -> None:
    pc = PC(http)
    h5_pair = browser.exchange(browser.code()).get_json()
    refused = http.post(
        f"/auth/scan/{pc.ticket}/scanned",
        headers={"Authorization": f"Bearer {h5_pair['access_token']}"},
    )
    assert refused.status_code == 403
    assert refused.get_json()["error"] == "access_denied"


def test_scanned_and_confirm_need_a_bearer(http: FlaskClient) -> None:
    pc = PC(http)
    for step in ("scanned", "confirm"):
        answer = http.post(f"/auth/scan/{pc.ticket}/{step}", json={"approve": True})
        assert answer.status_code == 401
        assert answer.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("body", [{}, {"approve": "yes"}, {"approve": 1}, {"approve": None}])
def test_confirm_needs_a_boolean(http: FlaskClient, phone: Phone, body: dict[str, Any]) -> None:
    pc = PC(http)
    phone.send(pc.ticket, "scanned")
    answer = phone.send(pc.ticket, "confirm", body)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({"client_id": "nobody", "code_challenge": s256("x" * 43)}, "invalid_client"),
        ({"client_id": "shop-h5", "code_challenge": s256("x" * 43)}, "invalid_client"),
        ({"client_id": "shop-pc", "code_challenge": "short"}, "invalid_request"),
        ({"client_id": "shop-pc"}, "invalid_request"),
        ({"code_challenge": s256("x" * 43)}, "invalid_request"),
    ],
)
def test_bad_ticket_requests(http: FlaskClient, body: dict[str, str], error: str) -> None:
    answer = http.post("/auth/scan", json=body)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == error


@pytest.mark.parametrize("ticket", ["x" * 32, "nope", "A" * 40])
def test_unknown_tickets_are_not_found(http: FlaskClient, phone: Phone, ticket: str) -> None:
    assert http.get(f"/auth/scan/{ticket}", query_string={"wait": 0}).status_code == 404
    assert http.get(f"/auth/scan/{ticket}/qrcode").status_code == 404
    assert phone.send(ticket, "scanned").status_code == 404


@pytest.mark.parametrize(
    "query", [{"since": "done"}, {"wait": "26"}, {"wait": "-1"}, {"wait": "x"}]
)
def test_bad_poll_parameters(http: FlaskClient, query: dict[str, str]) -> None:
    pc = PC(http)
    answer = http.get(f"/auth/scan/{pc.ticket}", query_string=query)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "invalid_request"


def test_a_waiting_poll_sees_a_confirmation_made_meanwhile(
    web_app: Flask,
    http: FlaskClient,
    phone: Phone,
) -> None:
    server = ServerThread(web_app)
    try:
        pc = PC(http)
        phone.send(pc.ticket, "scanned")
        outcome: dict[str, Any] = {}

        def wait() -> None:
            outcome.update(
                requests.get(
                    f"{server.url}/auth/scan/{pc.ticket}",
                    params={"since": "scanned", "wait": 25},
                    timeout=60,
                ).json()
            )

        poller = threading.Thread(target=wait)
        poller.start()
        phone.send(pc.ticket, "confirm", {"approve": True})
        poller.join(timeout=60)
        assert outcome["status"] == "confirmed"
        assert pc.exchange(outcome["code"]).status_code == 200
    finally:
        server.stop()


def test_polls_past_the_gate_answer_at_once(web_app: Flask, http: FlaskClient) -> None:
    gate = web_app.extensions["issuer.pollgate"]
    taken = 0
    while gate.try_enter():
        taken += 1
    try:
        assert taken >= 1
        pc = PC(http)
        assert pc.poll(wait=25) == {"status": "pending", "expires_in": 300, "interval": 2}
    finally:
        for _ in range(taken):
            gate.leave()


@pytest.mark.stores
def test_prune_removes_expired_web_login_rows(
    web_app: Flask, http: FlaskClient, browser: Browser, clock: FakeClock
) -> None:
    store = web_app.extensions["issuer"].store
    PC(http)
    browser.code()  # an authorization request (taken) and a code
    browser.authorize()  # a request still waiting
    assert store.prune_web_login(clock()) == 0  # nothing has expired yet
    clock.advance(601)
    store.prune(clock())
    assert store.prune_web_login(clock()) == 0  # issuer prune removed all of them
