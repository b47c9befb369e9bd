"""WeChat's own cryptography for user data: no I/O, no Flask, just WeChat's algorithms.

- ``encryptedData`` (open-data decryption): AES-128-CBC, key = base64-decoded
  ``session_key``, iv = base64-decoded ``iv``, PKCS#7 padding, UTF-8 JSON inside with a
  ``watermark`` naming the app.
  https://developers.weixin.qq.com/miniprogram/dev/framework/open-ability/signature.html
- ``rawData`` signature: ``hex(sha1(rawData + session_key))``, the key as its base64 text.
- ``checksession`` signature: ``hex(HMAC-SHA256(key=session_key as base64 text, msg=""))``.
  https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/user-login/checkSessionKey.html
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import InvalidRequest, SessionKeyMismatch

BLOCK_BYTES = 16
MAX_ENCRYPTED_BYTES = 12 * 1024
BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def decode_base64(value: str, name: str) -> bytes:
    """Strict standard base64, after one repair: a ``+`` that form encoding turned into a
    space (the commonest accident in the field) is put back.

    :raises InvalidRequest: not base64, naming the field.
    """
    # Spaces first: a leading or trailing "+" that became a space is data, not padding.
    repaired = value.replace(" ", "+").strip()
    if not BASE64_TEXT.fullmatch(repaired) or len(repaired) % 4:
        raise InvalidRequest(f"{name} is not valid base64.")
    try:
        return base64.b64decode(repaired, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{name} is not valid base64.") from None


def decrypt_user_data(
    session_key: str, encrypted_data: str, iv: str, appid: str, openid: str | None = None
) -> dict[str, Any]:
    """Decrypt ``encryptedData`` and check that it was made for this app (and user).

    :param session_key: the stored ``session_key``, base64 text as WeChat gave it.
    :param openid: when given, a decrypted ``openId`` must equal it.
    :raises InvalidRequest: ``encrypted_data`` or ``iv`` is not base64 or has a wrong length.
    :raises SessionKeyMismatch: the padding, the JSON or the watermark is wrong: the data was
        encrypted with another ``session_key`` (usually rotated by a later ``wx.login``).
    """
    ciphertext = decode_base64(encrypted_data, "encrypted_data")
    nonce = decode_base64(iv, "iv")
    if len(nonce) != BLOCK_BYTES:
        raise InvalidRequest("iv must decode to 16 bytes.")
    if not ciphertext or len(ciphertext) % BLOCK_BYTES or len(ciphertext) > MAX_ENCRYPTED_BYTES:
        raise InvalidRequest("encrypted_data must decode to whole 16-byte blocks.")
    key = base64.b64decode(session_key)
    decryptor = Cipher(algorithms.AES(key), modes.CBC(nonce)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(BLOCK_BYTES * 8).unpadder()
    try:
        plaintext = unpadder.update(padded) + unpadder.finalize()
        data = json.loads(plaintext.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise SessionKeyMismatch() from None
    if not isinstance(data, dict):
        raise SessionKeyMismatch()
    watermark = data.get("watermark")
    if not isinstance(watermark, dict) or watermark.get("appid") != appid:
        raise SessionKeyMismatch("The data was made for another app; call wx.login again.")
    # The watermark timestamp is deliberately not checked for age (SPEC §2).
    if openid is not None and "openId" in data and data["openId"] != openid:
        raise SessionKeyMismatch("The data belongs to another user; call wx.login again.")
    return data


def raw_data_signature(raw_data: str, session_key: str) -> str:
    """``hex(sha1(rawData + session_key))``, as ``wx.getUserInfo`` signs ``rawData``."""
    return hashlib.sha1((raw_data + session_key).encode("utf-8")).hexdigest()  # noqa: S324


def raw_data_matches(raw_data: str, signature: str, session_key: str) -> bool:
    """Constant-time check of a ``rawData`` signature."""
    expected = raw_data_signature(raw_data, session_key)
    candidate = signature.strip().lower()
    # compare_digest raises on non-ASCII text, and such a signature cannot be a hex digest.
    return candidate.isascii() and hmac.compare_digest(expected, candidate)


def check_session_signature(session_key: str) -> str:
    """The ``signature`` ``wxa/checksession`` expects: HMAC-SHA256 of the empty string keyed
    by the ``session_key`` base64 text as-is (not its decoded bytes)."""
    return hmac.new(session_key.encode("utf-8"), b"", hashlib.sha256).hexdigest()
