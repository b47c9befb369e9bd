"""WeChat's own cryptography (issuer.wechat.crypto): the public vectors byte for byte, and every way
an ``encryptedData`` + ``iv`` pair can be malformed (SPEC §2 decrypt rows).

The vectors are WeChat's official decrypt sample and signature examples (the same values
wechatpy, EasyWeChat and WxJava test with), kept in ``tests/vectors/wechat.json``; a missing
file fails these tests, it never skips them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from issuer.errors import InvalidRequest, SessionKeyMismatch
from issuer.wechat.crypto import (
    check_session_signature,
    decode_base64,
    decrypt_user_data,
    raw_data_matches,
    raw_data_signature,
)

VECTORS_PATH = Path(__file__).resolve().parent / "vectors" / "wechat.json"
SAMPLE_OPENID = "oGZUI0egBJY1zhBYw2KhdUfwVJJE"
SAMPLE_APPID = "wx4f4bc4dec97d474b"

# Our own key and iv for the cases the official sample cannot express. The iv's base64 text
# ("+/v7...") carries "+" characters -- the first one too, as 1 iv in 64 does -- so the space
# repair has something to repair.
KEY_TEXT = base64.b64encode(bytes(range(16))).decode()
IV_BYTES = b"\xfb" * 16
IV_TEXT = base64.b64encode(IV_BYTES).decode()
APPID = "wx1111111111111111"
OPENID = "o-test-openid"


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    # open() raises when the file is missing: an error, never a skip.
    with VECTORS_PATH.open(encoding="utf-8") as file:
        loaded: dict[str, Any] = json.load(file)
    return loaded


def encrypt(
    plaintext: bytes, key_text: str = KEY_TEXT, iv: bytes = IV_BYTES, *, pad: bool = True
) -> str:
    """AES-128-CBC as WeChat does it; ``pad=False`` for plaintexts of whole blocks."""
    if pad:
        padder = padding.PKCS7(128).padder()
        plaintext = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(base64.b64decode(key_text)), modes.CBC(iv)).encryptor()
    return base64.b64encode(encryptor.update(plaintext) + encryptor.finalize()).decode()


def good_plain(**changes: Any) -> dict[str, Any]:
    plain: dict[str, Any] = {
        "openId": OPENID,
        "nickName": "Band",
        "watermark": {"timestamp": 1477314187, "appid": APPID},
    }
    plain.update(changes)
    return {key: value for key, value in plain.items() if value is not None}


def padded_with(pad: bytes) -> bytes:
    """A valid object for APPID/OPENID (trailing spaces are valid JSON) ending in ``pad``,
    a whole number of blocks long: only the padding can be wrong."""
    text = json.dumps(good_plain()).encode()
    text += b" " * ((16 - len(pad) - len(text)) % 16)
    return text + pad


def encrypt_json(value: Any) -> str:
    return encrypt(json.dumps(value).encode())


# -- the public vectors


def test_official_sample_decrypts_to_its_plaintext(vectors):
    case = vectors["decrypt_data"]
    assert case["appid"] == SAMPLE_APPID
    data = decrypt_user_data(case["session_key"], case["encrypted_data"], case["iv"], case["appid"])
    assert data == json.loads(case["plaintext"])
    assert data["openId"] == SAMPLE_OPENID
    assert data["unionId"] == "ocMvos6NjeKLIBqg5Mr9QjxrP1FA"


def test_official_sample_with_its_own_openid_passes(vectors):
    case = vectors["decrypt_data"]
    data = decrypt_user_data(
        case["session_key"], case["encrypted_data"], case["iv"], case["appid"], SAMPLE_OPENID
    )
    assert data == json.loads(case["plaintext"])


def test_official_sample_for_another_openid_is_a_mismatch(vectors):
    case = vectors["decrypt_data"]
    with pytest.raises(SessionKeyMismatch):
        decrypt_user_data(
            case["session_key"],
            case["encrypted_data"],
            case["iv"],
            case["appid"],
            "oGZUI0egBJY1zhBYw2KhdUfwVJJF",
        )


def test_official_sample_for_another_app_is_a_mismatch(vectors):
    case = vectors["decrypt_data"]
    with pytest.raises(SessionKeyMismatch):
        decrypt_user_data(case["session_key"], case["encrypted_data"], case["iv"], APPID)


def test_raw_data_signature_vector(vectors):
    case = vectors["raw_data_signature"]
    assert raw_data_signature(case["raw_data"], case["session_key"]) == case["signature"]
    assert raw_data_matches(case["raw_data"], case["signature"], case["session_key"])
    assert raw_data_matches(case["raw_data"], case["signature"].upper(), case["session_key"])
    assert not raw_data_matches(case["raw_data"] + " ", case["signature"], case["session_key"])
    assert not raw_data_matches(case["raw_data"], case["signature"], KEY_TEXT)


def test_check_session_hmac_vector(vectors):
    case = vectors["check_session_signature"]
    key = case["session_key"]
    # The vector: HMAC-SHA256 keyed by the key's base64 *text*, over the message ...
    signed = hmac.new(key.encode(), case["message"].encode(), hashlib.sha256).hexdigest()
    assert signed == case["hmac_sha256"]
    # ... and checksession signs the empty string the same way.
    assert check_session_signature(key) == hmac.new(key.encode(), b"", hashlib.sha256).hexdigest()
    decoded_key = hmac.new(base64.b64decode(key), b"", hashlib.sha256).hexdigest()
    assert check_session_signature(key) != decoded_key


# -- malformations


def flip_last_byte(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[-1] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


Case = Callable[[dict[str, Any]], tuple[str, str, str]]  # vectors -> (key, data, iv)


def sample(vectors: dict[str, Any]) -> tuple[str, str, str]:
    case = vectors["decrypt_data"]
    return case["session_key"], case["encrypted_data"], case["iv"]


INVALID_REQUEST: list[Any] = [
    pytest.param(lambda v: (sample(v)[0], "!!!!not-base64!!!!", sample(v)[2]), id="data garbage"),
    pytest.param(lambda v: (sample(v)[0], sample(v)[1], "r7BXXKkLb8qr$Nn05n0qiA=="), id="iv $"),
    pytest.param(lambda v: (sample(v)[0], sample(v)[1][:-1], sample(v)[2]), id="data length%4"),
    pytest.param(lambda v: (sample(v)[0], sample(v)[1], "r7BXXKkL=b8q"), id="iv inner ="),
    pytest.param(lambda v: (sample(v)[0], sample(v)[1], "r7BXXKkLb8qr_Nn05n0qiA=="), id="iv url"),
    pytest.param(lambda v: (sample(v)[0], sample(v)[1], b64(b"\x01" * 15)), id="iv 15 bytes"),
    pytest.param(lambda v: (sample(v)[0], sample(v)[1], b64(b"\x01" * 17)), id="iv 17 bytes"),
    pytest.param(lambda v: (sample(v)[0], sample(v)[1], ""), id="iv empty"),
    pytest.param(
        lambda v: (sample(v)[0], b64(base64.b64decode(sample(v)[1])[:-1]), sample(v)[2]),
        id="data 1 byte short of a block",
    ),
    pytest.param(lambda v: (sample(v)[0], b64(b"\x00" * 17), sample(v)[2]), id="data 17 bytes"),
    pytest.param(lambda v: (sample(v)[0], "", sample(v)[2]), id="data empty"),
    pytest.param(lambda v: (sample(v)[0], "    ", sample(v)[2]), id="data blank"),
    pytest.param(lambda v: (sample(v)[0], b64(b"\x00" * 13 * 1024), IV_TEXT), id="data 13 KiB"),
]


@pytest.mark.parametrize("case", INVALID_REQUEST)
def test_malformed_base64_or_lengths_are_invalid_request(vectors, case: Case):
    key, data, iv = case(vectors)
    with pytest.raises(InvalidRequest):
        decrypt_user_data(key, data, iv, SAMPLE_APPID)


MISMATCH: list[Any] = [
    pytest.param(
        lambda v: (sample(v)[0], flip_last_byte(sample(v)[1]), sample(v)[2]), id="flipped last"
    ),
    pytest.param(lambda v: (KEY_TEXT, sample(v)[1], sample(v)[2]), id="wrong key"),
    pytest.param(
        lambda v: (sample(v)[0], sample(v)[1], b64(bytes(16))), id="wrong iv (first block)"
    ),
    pytest.param(lambda v: (KEY_TEXT, encrypt(b"not json at all"), IV_TEXT), id="not json"),
    pytest.param(lambda v: (KEY_TEXT, encrypt(b"\xff\xfe{}"), IV_TEXT), id="not utf-8"),
    pytest.param(lambda v: (KEY_TEXT, encrypt_json([good_plain()]), IV_TEXT), id="json array"),
    pytest.param(lambda v: (KEY_TEXT, encrypt_json("text"), IV_TEXT), id="json string"),
    pytest.param(
        lambda v: (
            KEY_TEXT,
            encrypt_json(good_plain(watermark={"timestamp": 1, "appid": SAMPLE_APPID})),
            IV_TEXT,
        ),
        id="watermark of another app",
    ),
    pytest.param(
        lambda v: (KEY_TEXT, encrypt_json(good_plain(watermark=None)), IV_TEXT), id="no watermark"
    ),
    pytest.param(
        lambda v: (KEY_TEXT, encrypt_json(good_plain(watermark=APPID)), IV_TEXT),
        id="watermark not an object",
    ),
    pytest.param(
        lambda v: (KEY_TEXT, encrypt_json(good_plain(watermark={"timestamp": 1})), IV_TEXT),
        id="watermark without appid",
    ),
    pytest.param(
        lambda v: (KEY_TEXT, encrypt_json(good_plain(openId="o-someone-else")), IV_TEXT),
        id="foreign openId",
    ),
    pytest.param(
        lambda v: (KEY_TEXT, encrypt(padded_with(b"\x02\x03\x03"), pad=False), IV_TEXT),
        id="padding bytes disagree",
    ),
    pytest.param(
        lambda v: (KEY_TEXT, encrypt(padded_with(b"\x00"), pad=False), IV_TEXT),
        id="padding byte zero",
    ),
    pytest.param(
        lambda v: (KEY_TEXT, encrypt(padded_with(b"\x11"), pad=False), IV_TEXT),
        id="padding byte above 16",
    ),
    pytest.param(
        lambda v: (KEY_TEXT, encrypt(padded_with(b""), pad=False), IV_TEXT),
        id="no padding at all",
    ),
]


@pytest.mark.parametrize("case", MISMATCH)
def test_undecryptable_or_foreign_data_is_a_session_key_mismatch(vectors, case: Case):
    key, data, iv = case(vectors)
    appid = APPID if key == KEY_TEXT else SAMPLE_APPID
    with pytest.raises(SessionKeyMismatch):
        decrypt_user_data(key, data, iv, appid, OPENID if key == KEY_TEXT else None)


def test_our_own_encryption_decrypts():
    # The control for the MISMATCH table: with nothing broken the same helper decrypts.
    data = decrypt_user_data(KEY_TEXT, encrypt_json(good_plain()), IV_TEXT, APPID, OPENID)
    assert data == good_plain()


@pytest.mark.parametrize("pad_bytes", [1, 2, 15, 16])
def test_valid_padding_of_every_length_decrypts(pad_bytes: int):
    # The control for the padding rows above: the same text with correct padding decrypts.
    padded = padded_with(bytes([pad_bytes]) * pad_bytes)
    assert decrypt_user_data(KEY_TEXT, encrypt(padded, pad=False), IV_TEXT, APPID, OPENID) == (
        good_plain()
    )


def test_timestamp_age_is_not_checked():
    plain = good_plain(watermark={"timestamp": 0, "appid": APPID})
    assert decrypt_user_data(KEY_TEXT, encrypt_json(plain), IV_TEXT, APPID, OPENID) == plain


def test_data_without_openid_passes_the_openid_check():
    # Phone encryptedData carries no openId: there is nothing to compare.
    plain = {"phoneNumber": "13800000000", "watermark": {"appid": APPID, "timestamp": 1}}
    assert decrypt_user_data(KEY_TEXT, encrypt_json(plain), IV_TEXT, APPID, OPENID) == plain


@pytest.mark.parametrize(
    ("repair_data", "repair_iv"),
    [(True, False), (False, True), (True, True)],
    ids=["data", "iv", "both"],
)
def test_plus_turned_into_space_still_decrypts(repair_data: bool, repair_iv: bool):
    attempts = (encrypt_json(good_plain(nickName=f"user {n}")) for n in range(1000))
    data = next(text for text in attempts if "+" in text)  # our fixed iv has "+" already
    assert "+" in data
    assert "+" in IV_TEXT
    sent_data = data.replace("+", " ") if repair_data else data
    sent_iv = IV_TEXT.replace("+", " ") if repair_iv else IV_TEXT
    decrypted = decrypt_user_data(KEY_TEXT, sent_data, sent_iv, APPID, OPENID)
    assert decrypted["watermark"] == {"timestamp": 1477314187, "appid": APPID}
    assert decrypted["openId"] == OPENID


def test_official_sample_with_plus_turned_into_space(vectors):
    case = vectors["decrypt_data"]
    assert "+" in case["encrypted_data"]
    data = decrypt_user_data(
        case["session_key"],
        case["encrypted_data"].replace("+", " "),
        case["iv"],
        case["appid"],
        SAMPLE_OPENID,
    )
    assert data == json.loads(case["plaintext"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("AAAA", b"\x00\x00\x00"),
        ("AAAA\n", b"\x00\x00\x00"),
        ("A+AA", b"\x03\xe0\x00"),
        ("A AA", b"\x03\xe0\x00"),
        ("+/v7", b"\xfb\xfb\xfb"),
        pytest.param(" /v7", b"\xfb\xfb\xfb", id="leading plus as space"),
        pytest.param("AAA+", b"\x00\x00\x3e", id="trailing plus"),
        pytest.param("AAA ", b"\x00\x00\x3e", id="trailing plus as space"),
        ("AA==", b"\x00"),
    ],
)
def test_decode_base64_accepts(text: str, expected: bytes):
    assert decode_base64(text, "field") == expected


@pytest.mark.parametrize("text", ["AAA", "AA=A", "A===", "-_-_", "AAAA\nAAAA", "ÄAAA", "AAAA=="])
def test_decode_base64_refuses_and_names_the_field(text: str):
    with pytest.raises(InvalidRequest, match="the_field"):
        decode_base64(text, "the_field")
