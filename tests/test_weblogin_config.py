"""The ``[[clients]]`` of web login: validated at start-up, one line naming what to fix."""

from __future__ import annotations

from typing import Any

import pytest

from issuer.config import (
    DEVELOPMENT_H5_CLIENT,
    DEVELOPMENT_WEB_CLIENT,
    ConfigError,
    load_settings,
)

URL = "https://login.example.com"  # production names itself
MP = "wx1111111111111111"
OA = "wx3333333333333333"
APPS = [
    {"appid": MP, "secret": "s1"},
    {"appid": OA, "secret": "s2", "kind": "officialaccount"},
]
H5: dict[str, Any] = {
    "id": "shop-h5",
    "kind": "h5",
    "app": OA,
    "redirect_uris": ["https://shop.example.com/auth/done"],
    "scope": "snsapi_userinfo",
}
WEB: dict[str, Any] = {"id": "shop-pc", "kind": "web", "app": MP, "page": "pages/scan/index"}


def settings(*clients: dict[str, Any], **extra: Any) -> Any:
    return load_settings({"url": URL, "apps": APPS, "clients": list(clients), **extra}, environ={})


def test_both_kinds_load() -> None:
    loaded = settings(H5, WEB)
    h5, web = loaded.client("shop-h5"), loaded.client("shop-pc")
    assert h5 is not None
    assert h5.app == OA
    assert h5.scope == "snsapi_userinfo"
    assert h5.redirect_uris == ("https://shop.example.com/auth/done",)
    assert web is not None
    assert web.page == "pages/scan/index"
    assert web.redirect_uris == ()
    assert loaded.client("nobody") is None


def test_h5_scope_defaults_to_base() -> None:
    entry = {key: value for key, value in H5.items() if key != "scope"}
    client = settings(entry).client("shop-h5")
    assert client is not None
    assert client.scope == "snsapi_base"


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"id": "has space"}, "clients.id"),
        ({"id": ""}, "clients.id"),
        ({"kind": "spa"}, "clients.kind of shop-h5"),
        ({"app": MP}, "clients.app of shop-h5"),  # an h5 client needs an official account
        ({"app": "wx9999999999999999"}, "clients.app of shop-h5"),
        ({"redirect_uris": []}, "clients.redirect_uris of shop-h5"),
        ({"redirect_uris": "https://a.example/"}, "clients.redirect_uris of shop-h5"),
        ({"redirect_uris": ["/relative"]}, "clients.redirect_uris of shop-h5"),
        ({"redirect_uris": ["https://a.example/#x"]}, "clients.redirect_uris of shop-h5"),
        ({"redirect_uris": ["http://a.example/done"]}, "clients.redirect_uris of shop-h5"),
        ({"scope": "snsapi_login"}, "clients.scope of shop-h5"),
        ({"page": "pages/x"}, "clients.page of shop-h5"),
        ({"colour": "red"}, "clients"),
    ],
)
def test_bad_h5_client_stops_start_up(change: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings({**H5, **change})
    assert caught.value.setting == setting
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"app": OA}, "clients.app of shop-pc"),  # a web client shows a mini-program code
        ({"page": "/pages/scan"}, "clients.page of shop-pc"),
        ({"page": "pages/scan?x=1"}, "clients.page of shop-pc"),
        ({"page": None}, "clients.page of shop-pc"),
        ({"scope": "snsapi_base"}, "clients.scope of shop-pc"),
    ],
)
def test_bad_web_client_stops_start_up(change: dict[str, Any], setting: str) -> None:
    entry = {key: value for key, value in {**WEB, **change}.items() if value is not None}
    with pytest.raises(ConfigError) as caught:
        settings(entry)
    assert caught.value.setting == setting


def test_loopback_http_redirect_is_allowed() -> None:
    client = settings({**H5, "redirect_uris": ["http://127.0.0.1:5000/done"]}).client("shop-h5")
    assert client is not None


def test_duplicate_client_id_refused() -> None:
    with pytest.raises(ConfigError, match="configured twice"):
        settings(H5, {**WEB, "id": "shop-h5"})


def test_clients_must_be_an_array_of_tables() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"url": URL, "apps": APPS, "clients": {"id": "x"}}, environ={})
    assert caught.value.setting == "clients"


def test_clients_from_the_toml_file(tmp_path: Any) -> None:
    path = tmp_path / "issuer.toml"
    path.write_text(
        f'[[apps]]\nappid = "{OA}"\nsecret = "s"\nkind = "officialaccount"\n'
        f'[[clients]]\nid = "shop-h5"\nkind = "h5"\napp = "{OA}"\n'
        'redirect_uris = ["https://shop.example.com/auth/done"]\n'
    )
    loaded = load_settings(
        {"config": str(path), "url": URL},
        environ={"ISSUER_WECHAT_APPID": MP, "ISSUER_WECHAT_SECRET": "x"},
    )
    assert loaded.client("shop-h5") is not None


def test_development_mode_plays_both_flows() -> None:
    loaded = load_settings({"env": "development"}, environ={})
    h5, web = loaded.client(DEVELOPMENT_H5_CLIENT), loaded.client(DEVELOPMENT_WEB_CLIENT)
    assert h5 is not None
    assert web is not None
    oa = loaded.app(h5.app)
    assert oa is not None
    assert oa.kind == "officialaccount"
    assert loaded.wechat_open_base == loaded.wechat_api_base
    assert loaded.wechat_open_base.endswith("/_wechat")


def test_production_authorize_page_is_wechats() -> None:
    assert settings(H5).wechat_open_base == "https://open.weixin.qq.com"


def test_development_on_a_plain_http_address_off_loopback_plays_no_web_client() -> None:
    loaded = load_settings({"env": "development", "url": "http://devbox.lan:8000"}, environ={})
    assert loaded.client(DEVELOPMENT_H5_CLIENT) is None
    assert loaded.client(DEVELOPMENT_WEB_CLIENT) is None
