"""Profile and account: PATCH /me, PUT /me/avatar and GET /avatars/<id>, sign out everywhere,
DELETE /me and ``issuer users delete``.

Images are made with Pillow here, the bad ones too: a JPEG carrying EXIF with a GPS position
and a camera name, a PNG declaring far more pixels than it holds (a decompression bomb).
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from PIL import ExifTags, Image

from issuer.cli import main
from issuer.profile import AVATAR_SIDE, MAX_AVATAR_BYTES
from issuer.wechat.emulator import WeChatEmulator
from tests import test_cli as cli_tests
from tests.conftest import APPID, APPID2, SECRET, SECRET2
from tests.test_cli import audit_lines, ok, one_line_failure

# The CLI tests' fixtures: a CLI runner and a serving app on one database and key directory.
cli_env = cli_tests.cli_env
keys_dir = cli_tests.keys_dir
issuer_app = cli_tests.issuer_app
log_in = cli_tests.log_in
restore_logging = cli_tests.restore_logging
run = cli_tests.run

MARKER = b"MARKERCAM-7731"


def bearer(body: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {body['access_token']}"}


def jpeg_with_gps(size: tuple[int, int] = (1200, 900)) -> bytes:
    """A photo as a phone takes it: EXIF with a camera name and a GPS position."""
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = MARKER.decode()
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (31.0, 14.0, 3.5)
    gps[ExifTags.GPS.GPSLongitudeRef] = "E"
    gps[ExifTags.GPS.GPSLongitude] = (121.0, 28.0, 7.25)
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, comment=MARKER)
    return out.getvalue()


def png(size: tuple[int, int] = (32, 32), mode: str = "RGBA") -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 200, 10, 128) if mode == "RGBA" else 0).save(out, "PNG")
    return out.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels: a decompression bomb."""
    data = png((1, 1), mode="L")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    forged = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data[:8] + forged + data[8 + 25 :]


def multipart_body(data: bytes, field: str = "file") -> tuple[bytes, str]:
    """What wx.uploadFile sends: multipart/form-data (RFC 7578) with the file in ``field``.
    Built here: Werkzeug's test client would spill a large one into a temporary file."""
    boundary = "----wxupload7MA4YWxkTrZu0gW"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="tmp_avatar.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


def multipart(client: FlaskClient, headers: dict[str, str], data: bytes, field: str = "file"):
    """As wx.uploadFile sends it: a POST (it has no method option)."""
    body, content_type = multipart_body(data, field)
    return client.post("/me/avatar", headers=headers, data=body, content_type=content_type)


# -- PATCH /me


@pytest.mark.parametrize(
    "nickname",
    ["小明", "  Ann  ", "👨\u200d👩\u200d👧 family", "x" * 64, "O'Brien-Smith 3"],
)
def test_a_nickname_the_user_typed_is_kept_and_shown(
    client: FlaskClient, login: Callable[..., dict[str, Any]], nickname: str
) -> None:
    body = login("alice")
    response = client.patch("/me", headers=bearer(body), json={"nickname": nickname})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["nickname"] == nickname.strip()
    assert response.headers["Cache-Control"] == "no-store"
    assert client.get("/me", headers=bearer(body)).get_json()["nickname"] == nickname.strip()


@pytest.mark.parametrize(
    ("nickname", "why"),
    [
        ("", "empty"),
        ("   ", "blank"),
        ("x" * 65, "too long"),
        ("a\x00b", "NUL"),
        ("a\nb", "newline"),
        ("a\x7fb", "DEL"),
        ("admin\u202egnp", "bidi override"),
        ("a\u200bb", "zero-width space"),
        ("a\u2028b", "line separator"),
        ("a\u2029b", "paragraph separator"),
        ("a\ue000b", "private use"),
        ("a\ufeffb", "byte order mark"),
    ],
)
def test_a_bad_nickname_is_refused_naming_the_field(
    client: FlaskClient, login: Callable[..., dict[str, Any]], nickname: str, why: str
) -> None:
    body = login("alice")
    response = client.patch("/me", headers=bearer(body), json={"nickname": nickname})
    assert response.status_code == 400, why
    assert response.get_json()["error"] == "invalid_request"
    assert "nickname" in response.get_json()["error_description"]
    assert client.get("/me", headers=bearer(body)).get_json()["nickname"] is None


@pytest.mark.parametrize("value", [123, None, ["a"], {"a": 1}])
def test_a_nickname_that_is_not_a_string_is_refused(
    client: FlaskClient, login: Callable[..., dict[str, Any]], value: object
) -> None:
    body = login("alice")
    response = client.patch("/me", headers=bearer(body), json={"nickname": value})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"


def test_an_https_avatar_url_is_kept(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    url = "https://thirdwx.qlogo.cn/mmopen/vi_32/abc/132"
    response = client.patch("/me", headers=bearer(body), json={"avatar_url": url})
    assert response.status_code == 200
    assert response.get_json()["avatar_url"] == url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/a.png",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "https://",
        "https:///path",
        "https://user:pass@example.com/a.png",
        "https://example.com/a b.png",
        "https://example.com/\x00.png",
        "https://example.com:99999/a.png",
        "https://example.com/" + "a" * 1100,
        "wxfile://tmp_abc.jpg",
        "https://issuer.test/avatars/" + "0" * 32,  # looks like ours, names nothing stored
    ],
)
def test_a_bad_avatar_url_is_refused(
    client: FlaskClient, login: Callable[..., dict[str, Any]], url: str
) -> None:
    body = login("alice")
    response = client.patch("/me", headers=bearer(body), json={"avatar_url": url})
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"
    assert "avatar_url" in response.get_json()["error_description"]


def test_patch_me_needs_a_field_and_a_bearer(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    empty = client.patch("/me", headers=bearer(body), json={})
    assert empty.status_code == 400
    assert empty.get_json()["error"] == "invalid_request"
    anonymous = client.patch("/me", json={"nickname": "x"})
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"


def test_the_16_kib_limit_still_holds_for_patch_me(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    response = client.patch(
        "/me", headers=bearer(body), json={"nickname": "x", "pad": "y" * 20_000}
    )
    assert response.status_code == 413
    assert response.get_json()["error"] == "invalid_request"


# -- PUT /me/avatar and GET /avatars/<id>


def test_an_avatar_uploaded_as_wx_upload_file_sends_it_is_served_without_exif(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    photo = jpeg_with_gps()
    assert MARKER in photo
    assert Image.open(io.BytesIO(photo)).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    response = multipart(client, bearer(body), photo)
    assert response.status_code == 200, response.get_json()
    url = response.get_json()["avatar_url"]
    assert url.startswith("https://issuer.test/avatars/")
    assert client.get("/me", headers=bearer(body)).get_json()["avatar_url"] == url

    served = client.get(url.removeprefix("https://issuer.test"))
    assert served.status_code == 200
    assert served.mimetype == "image/webp"
    assert served.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert served.headers["X-Content-Type-Options"] == "nosniff"
    assert served.data != photo
    assert MARKER not in served.data
    assert b"Exif" not in served.data
    assert b"GPS" not in served.data
    image = Image.open(io.BytesIO(served.data))
    assert image.format == "WEBP"
    assert max(image.size) == AVATAR_SIDE
    assert image.size == (640, 480)
    assert not image.getexif()
    assert "exif" not in image.info
    assert "icc_profile" not in image.info


def test_an_avatar_answers_if_none_match_with_304(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    url = multipart(client, bearer(body), png()).get_json()["avatar_url"]
    path = url.removeprefix("https://issuer.test")
    first = client.get(path)
    etag = first.headers["ETag"]
    again = client.get(path, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.data == b""
    assert again.headers["ETag"] == etag
    other = client.get(path, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200
    assert other.data == first.data


def test_a_raw_image_body_is_taken_and_keeps_its_transparency(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    response = client.put(
        "/me/avatar", headers=bearer(body), data=png((50, 20)), content_type="image/png"
    )
    assert response.status_code == 200, response.get_json()
    served = client.get(response.get_json()["avatar_url"].removeprefix("https://issuer.test"))
    image = Image.open(io.BytesIO(served.data))
    assert image.size == (50, 20)  # small images are not enlarged
    assert image.mode == "RGBA"


def test_a_new_avatar_replaces_the_old_one(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    first = multipart(client, bearer(body), png((10, 10))).get_json()["avatar_url"]
    second = multipart(client, bearer(body), png((20, 20))).get_json()["avatar_url"]
    assert first != second
    assert client.get(first.removeprefix("https://issuer.test")).status_code == 404
    assert client.get(second.removeprefix("https://issuer.test")).status_code == 200


def test_an_own_avatar_url_may_be_set_back_but_not_another_users(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    alice, bob = login("alice"), login("bob")
    alices = multipart(client, bearer(alice), png()).get_json()["avatar_url"]
    assert (
        client.patch("/me", headers=bearer(alice), json={"avatar_url": alices}).status_code == 200
    )
    stolen = client.patch("/me", headers=bearer(bob), json={"avatar_url": alices})
    assert stolen.status_code == 400
    assert client.get("/me", headers=bearer(bob)).get_json()["avatar_url"] is None


@pytest.mark.parametrize(
    "data",
    [
        b"not an image at all",
        b"GIF89a" + b"\x00" * 10,
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>",
        b"%PDF-1.4\n",
        b"",
    ],
    ids=["text", "truncated-gif", "truncated-png", "svg", "pdf", "empty"],
)
def test_what_is_not_an_image_is_refused(
    client: FlaskClient, login: Callable[..., dict[str, Any]], data: bytes
) -> None:
    body = login("alice")
    for response in (
        multipart(client, bearer(body), data),
        client.put("/me/avatar", headers=bearer(body), data=data, content_type="image/jpeg"),
    ):
        assert response.status_code == 400, response.get_json()
        assert response.get_json()["error"] == "invalid_request"
    assert client.get("/me", headers=bearer(body)).get_json()["avatar_url"] is None


def test_a_tiff_is_not_decoded(client: FlaskClient, login: Callable[..., dict[str, Any]]) -> None:
    body = login("alice")
    out = io.BytesIO()
    Image.new("RGB", (8, 8)).save(out, "TIFF")
    response = client.put(
        "/me/avatar", headers=bearer(body), data=out.getvalue(), content_type="image/tiff"
    )
    assert response.status_code == 400


@pytest.mark.parametrize(
    ("width", "height"), [(8000, 6000), (100_000, 100_000)], ids=["48Mpx", "10Gpx"]
)
def test_a_decompression_bomb_is_refused_before_it_is_decoded(
    client: FlaskClient, login: Callable[..., dict[str, Any]], width: int, height: int
) -> None:
    body = login("alice")
    bomb = png_declaring(width, height)
    assert len(bomb) < 200
    if width * height < Image.MAX_IMAGE_PIXELS:  # Pillow itself refuses to open the larger
        assert Image.open(io.BytesIO(bomb)).size == (width, height)
    response = client.put("/me/avatar", headers=bearer(body), data=bomb, content_type="image/png")
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"
    assert "pixels" in response.get_json()["error_description"]


def test_an_image_over_2_mib_is_413(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    big = png() + b"\x00" * MAX_AVATAR_BYTES
    raw = client.put("/me/avatar", headers=bearer(body), data=big, content_type="image/png")
    assert raw.status_code == 413
    assert raw.get_json() == {
        "error": "invalid_request",
        "error_description": "The image is larger than 2 MiB.",
    }
    assert multipart(client, bearer(body), big).status_code == 413
    # Within the multipart allowance in all, yet the file itself is over 2 MiB.
    assert multipart(client, bearer(body), big[: MAX_AVATAR_BYTES + 10]).status_code == 413


def chunked(body: bytes, size: int = 65536) -> Iterator[bytes]:
    """The body as a generator: requests sends it with Transfer-Encoding: chunked."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_an_image_over_2_mib_sent_chunked_is_413(
    live_server: str, login: Callable[..., dict[str, Any]], kind: str
) -> None:
    body = login("alice")
    image = png() + b"\x00" * MAX_AVATAR_BYTES
    if kind == "raw":
        data, content_type = image, "image/png"
    else:
        data, content_type = multipart_body(image)
    response = requests.put(
        live_server + "/me/avatar",
        data=chunked(data),
        headers={**bearer(body), "Content-Type": content_type},
        timeout=10,
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 413, response.text


def test_an_image_sent_chunked_within_the_limit_is_taken(
    live_server: str, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    response = requests.put(
        live_server + "/me/avatar",
        data=chunked(jpeg_with_gps((3000, 2000)), 4096),
        headers={**bearer(body), "Content-Type": "image/jpeg"},
        timeout=10,
    )
    assert response.request.headers.get("Transfer-Encoding") == "chunked"
    assert response.status_code == 200, response.text


def test_an_avatar_upload_needs_a_bearer_the_file_field_and_an_image_type(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    body = login("alice")
    assert client.put("/me/avatar", data=png(), content_type="image/png").status_code == 401
    wrong_field = multipart(client, bearer(body), png(), field="image")
    assert wrong_field.status_code == 400
    assert "file" in wrong_field.get_json()["error_description"]
    as_json = client.put("/me/avatar", headers=bearer(body), json={"file": "x"})
    assert as_json.status_code == 400


@pytest.mark.parametrize("avatar_id", ["0" * 32, "x", "../etc/passwd", "A" * 32])
def test_an_unknown_avatar_is_404(client: FlaskClient, avatar_id: str) -> None:
    response = client.get(f"/avatars/{avatar_id}")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


# -- sign out everywhere


def test_logout_with_scope_global_ends_every_session_of_the_user(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    phone, tablet, bob = login("alice"), login("alice"), login("bob")
    response = client.post("/auth/logout", headers=bearer(phone), json={"scope": "global"})
    assert response.status_code == 204
    for ended in (phone, tablet):
        assert client.get("/me", headers=bearer(ended)).status_code == 401
        refused = client.post("/auth/refresh", json={"refresh_token": ended["refresh_token"]})
        assert refused.status_code == 400
    assert client.get("/me", headers=bearer(bob)).status_code == 200
    # Idempotent, as every logout: the ended Bearer may ask again.
    again = client.post("/auth/logout", headers=bearer(phone), json={"scope": "global"})
    assert again.status_code == 204


def test_logout_without_scope_still_ends_one_session(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    phone, tablet = login("alice"), login("alice")
    assert client.post("/auth/logout", headers=bearer(phone)).status_code == 204
    assert client.get("/me", headers=bearer(phone)).status_code == 401
    assert client.get("/me", headers=bearer(tablet)).status_code == 200


@pytest.mark.parametrize(
    ("fields", "with_bearer"),
    [({"scope": "everything"}, True), ({"scope": 1}, True), ({"scope": "global"}, False)],
)
def test_a_bad_or_unbacked_scope_is_refused(
    client: FlaskClient,
    login: Callable[..., dict[str, Any]],
    fields: dict[str, Any],
    with_bearer: bool,
) -> None:
    body = login("alice")
    headers = bearer(body) if with_bearer else {}
    if not with_bearer:
        fields = {**fields, "refresh_token": body["refresh_token"]}
    response = client.post("/auth/logout", headers=headers, json=fields)
    assert response.status_code == 400
    assert response.get_json()["error"] == "invalid_request"
    assert client.get("/me", headers=bearer(body)).status_code == 200


# -- DELETE /me


def user_bytes(wechat: WeChatEmulator, appid: str, user: str) -> list[bytes]:
    openid, unionid = wechat.identity(appid, user)
    return [openid.encode(), unionid.encode(), wechat.phone_of(user).encode()]


@pytest.mark.stores
def test_delete_me_removes_the_account_and_a_later_login_is_a_new_user(
    client: FlaskClient,
    login: Callable[..., dict[str, Any]],
    wechat: WeChatEmulator,
    app: Flask,
    backend: str,
) -> None:
    body, other_device = login("alice"), login("alice")
    headers = bearer(body)
    client.patch("/me", headers=headers, json={"nickname": "Alice Wonder"})
    avatar_url = multipart(client, headers, png()).get_json()["avatar_url"]
    phone = client.post(
        "/wechat/phone", headers=headers, json={"code": wechat.mint_phone_code(APPID, "alice")}
    )
    assert phone.status_code == 200
    store = app.extensions["issuer"].store

    response = client.delete("/me", headers=headers)
    assert response.status_code == 204
    assert response.data == b""
    for token in (body, other_device):
        assert client.get("/me", headers=bearer(token)).status_code == 401
        refused = client.post("/auth/refresh", json={"refresh_token": token["refresh_token"]})
        assert refused.status_code == 400
    assert client.get(avatar_url.removeprefix("https://issuer.test")).status_code == 404
    assert store.get_user(body["user_id"]) is None
    openid, _ = wechat.identity(APPID, "alice")
    assert store.get_identity(APPID, openid) is None
    assert client.delete("/me", headers=headers).status_code == 401

    again = login("alice")
    assert again["is_new_user"] is True
    assert again["user_id"] != body["user_id"]
    me = client.get("/me", headers=bearer(again)).get_json()
    assert me["nickname"] is None
    assert me["avatar_url"] is None
    assert me["phone_number"] is None


def test_delete_leaves_none_of_the_users_bytes_in_the_sqlite_files(
    client: FlaskClient,
    login: Callable[..., dict[str, Any]],
    wechat: WeChatEmulator,
    database_url: str,
) -> None:
    keep = login("bob")  # another user, whose rows stay
    body = login("carol")
    headers = bearer(body)
    nickname = "Carol-Unique-Nickname-4242"
    client.patch("/me", headers=headers, json={"nickname": nickname})
    multipart(client, headers, png())
    client.post(
        "/wechat/phone", headers=headers, json={"code": wechat.mint_phone_code(APPID, "carol")}
    )
    client.post("/auth/refresh", json={"refresh_token": body["refresh_token"]})
    path = Path(database_url.removeprefix("sqlite:///"))
    wal = Path(f"{path}-wal")
    secrets_of_carol = [*user_bytes(wechat, APPID, "carol"), nickname.encode()]
    present = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    # The test can fail: before deletion the openid and nickname are in the files.
    assert secrets_of_carol[0] in present
    assert nickname.encode() in present

    assert client.delete("/me", headers=headers).status_code == 204
    files = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    for secret in secrets_of_carol:
        assert secret not in files, secret
    assert wechat.identity(APPID, "bob")[0].encode() in files
    assert client.get("/me", headers=bearer(keep)).status_code == 200


@pytest.mark.stores
def test_delete_removes_the_users_merged_into_it(
    app_factory: Callable[..., Flask], wechat: WeChatEmulator, backend: str
) -> None:
    app = app_factory(
        apps=[{"appid": APPID, "secret": SECRET}, {"appid": APPID2, "secret": SECRET2}]
    )
    client = app.test_client()
    store = app.extensions["issuer"].store

    def login(appid: str, unionid: bool) -> dict[str, Any]:
        code = wechat.mint_code(appid, "dave", unionid=unionid)
        response = client.post("/auth/login", json={"code": code, "appid": appid})
        assert response.status_code == 200
        body: dict[str, Any] = response.get_json()
        return body

    first = login(APPID, unionid=False)  # no unionid yet: a user of its own
    second = login(APPID2, unionid=True)
    assert first["user_id"] != second["user_id"]
    openid, unionid = wechat.identity(APPID, "dave")
    survivor = store.link_unionid(APPID, openid, unionid)
    assert survivor == second["user_id"]
    assert store.get_user(first["user_id"]).merged_into == survivor

    assert client.delete("/me", headers=bearer(second)).status_code == 204
    assert store.get_user(first["user_id"]) is None
    assert store.get_user(second["user_id"]) is None
    assert store.get_identity(APPID, openid) is None
    assert store.get_identity(APPID2, wechat.identity(APPID2, "dave")[0]) is None
    assert client.get("/me", headers=bearer(first)).status_code == 401


def test_delete_me_needs_a_bearer(client: FlaskClient) -> None:
    response = client.delete("/me")
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_token"


# -- the operator commands


def test_users_delete_removes_the_account(
    run: Any, log_in: Callable[[str], dict[str, Any]], issuer_app: Flask
) -> None:
    body = log_in("erin")
    output = ok(run("users", "delete", body["user_id"]))
    assert body["user_id"] in output
    client = issuer_app.test_client()
    assert client.get("/me", headers=bearer(body)).status_code == 401


def test_users_delete_leaves_an_audit_line(
    run: Any, log_in: Callable[[str], dict[str, Any]]
) -> None:
    body = log_in("erin")
    result = run("users", "delete", body["user_id"])
    ok(result)
    lines = audit_lines(result)
    assert any(body["user_id"] in str(line) for line in lines), lines


def test_users_delete_of_an_unknown_user_fails_in_one_line(run: Any) -> None:
    ok(run("db", "upgrade"))
    line = one_line_failure(run("users", "delete", "usr_nobody"))
    assert "no user usr_nobody" in line


def test_users_revoke_ends_every_session(
    run: Any, log_in: Callable[[str], dict[str, Any]], issuer_app: Flask
) -> None:
    first, second = log_in("frank"), log_in("frank")
    assert "ended 2 sessions" in ok(run("users", "revoke", first["user_id"]))
    client = issuer_app.test_client()
    for body in (first, second):
        assert client.get("/me", headers=bearer(body)).status_code == 401


def test_an_avatar_may_be_put_as_well_as_posted(
    client: FlaskClient, login: Callable[..., dict[str, Any]]
) -> None:
    """wx.uploadFile always POSTs; PUT is the method of the resource, for other clients."""
    body = login("alice")
    data, content_type = multipart_body(png())
    response = client.put("/me/avatar", headers=bearer(body), data=data, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["avatar_url"].startswith("https://issuer.test/avatars/")


def test_delete_zeroes_the_users_bytes_even_where_sqlite_would_not_by_default(
    app: Flask, login: Callable[..., dict[str, Any]], wechat: WeChatEmulator, database_url: str
) -> None:
    """Upstream SQLite leaves deleted bytes in free space (``secure_delete`` is off unless the
    build turns it on, as Debian's does): deletion must not depend on the build."""
    client = app.test_client()
    store = app.extensions["issuer"].store
    for user in ("before-1", "before-2"):
        login(user)
    body = login("gina")
    nickname = "Gina-Unique-Nickname-9191"
    client.patch("/me", headers=bearer(body), json={"nickname": nickname})
    for user in ("after-1", "after-2"):
        login(user)
    connection = store._connection()  # this thread's, as the store's calls here use it
    connection.execute("PRAGMA secure_delete=OFF")  # what an upstream build does
    assert store.delete_user(body["user_id"])
    assert connection.execute("PRAGMA secure_delete").fetchone()[0] == 0  # left as it was
    path = Path(database_url.removeprefix("sqlite:///"))
    wal = Path(f"{path}-wal")
    files = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    for secret in [*user_bytes(wechat, APPID, "gina"), nickname.encode()]:
        assert secret not in files, secret


def test_users_delete_has_help_with_nothing_configured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("ISSUER_", "FLASK_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["users", "delete", "--help"])
    assert "Usage:" in ok(result)
    assert "Delete the account" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_users_delete_takes_an_id_that_starts_with_a_dash(run: Any) -> None:
    ok(run("db", "upgrade"))
    line = one_line_failure(run("users", "delete", "-usr_dash"))
    assert "no user -usr_dash" in line
