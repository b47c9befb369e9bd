"""The user's own profile, checked and cleaned before it is stored: pure, no I/O.

Since 2022 WeChat gives a mini-program no nickname or avatar (``getUserProfile`` answers a
grey avatar and "微信用户"); users fill them in with ``<input type="nickname">`` and
``<button open-type="chooseAvatar">``, and the mini-program sends them here.

Nickname rules (:func:`check_nickname`): surrounding white space is trimmed; then 1 to 64
Unicode code points. Refused anywhere in it: control characters (``Cc``), format characters
(``Cf``: bidirectional overrides such as U+202E, which make a name read differently from what
it is, zero-width spaces and joiners used to fake look-alike names) except U+200D ZERO WIDTH
JOINER, which emoji sequences need; line and paragraph separators (``Zl``, ``Zp``);
surrogates (``Cs``), private-use (``Co``) and unassigned (``Cn``) code points, which render as
nothing or as tofu.

Avatars (:func:`reencode_avatar`): the bytes are decoded by Pillow -- decoding untrusted
images by hand is how exploits happen, and Pillow's decoders are fuzzed and maintained --
limited to the formats a phone's camera or WeChat's avatar chooser produce (JPEG, PNG,
WebP, GIF: the other decoders, PSD, EPS, TIFF and the rest, are never reached). The
dimensions the header declares are checked *before* any pixel is decoded
(:data:`MAX_AVATAR_PIXELS`), so a small file declaring a huge image (a decompression bomb) costs
nothing. The image is then cut down to :data:`AVATAR_SIDE` pixels a side and re-encoded from
its pixels alone, as WebP: nothing the sender wrote survives (EXIF and its GPS position, ICC
profiles, XMP, comments, trailing bytes of a polyglot), and what is served is always an image
of the type it says it is.
"""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
import warnings
from dataclasses import dataclass
from urllib.parse import urlsplit

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InvalidRequest

MAX_NICKNAME = 64
# Emoji ZWJ sequences (👨‍👩‍👧) need it; every other format character is refused.
ZERO_WIDTH_JOINER = "\u200d"
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})
MAX_AVATAR_URL = 1024

# What PUT /me/avatar takes in: WeChat's avatar chooser hands the mini-program a compressed
# JPEG far smaller than this.
MAX_AVATAR_BYTES = 2 * 1024 * 1024
# 40 megapixels: a 48 Mpx phone camera's full-size photo is refused, anything a mini-program
# sends from chooseAvatar or a compressed chooseMedia is far below. Decoding that many RGBA
# pixels costs at most 160 MB for a moment, the most one request may hold.
MAX_AVATAR_PIXELS = 40_000_000
AVATAR_SIDE = 640
AVATAR_TYPE = "image/webp"
AVATAR_QUALITY = 85
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
# /avatars/<id>: the hex SHA-256 of the owner and the served bytes, cut to 128 bits.
AVATAR_ID = re.compile(r"[0-9a-f]{32}")


class ImageTooLarge(InvalidRequest):
    """An image declaring more pixels than :data:`MAX_AVATAR_PIXELS`.

    400 rather than 413: the request itself is within the size limit; what it describes is
    not, and no smaller body of the same image would pass.
    """


@dataclass(frozen=True)
class Avatar:
    """A re-encoded avatar, ready to store and serve."""

    id: str
    content_type: str
    image: bytes
    width: int
    height: int


def check_nickname(value: str) -> str:
    """The nickname to store: ``value`` trimmed, checked against the rules of this module.

    :raises InvalidRequest: empty, longer than 64 code points, or holding a refused character.
    """
    nickname = value.strip()
    if not nickname:
        raise InvalidRequest("nickname must not be empty.")
    if len(nickname) > MAX_NICKNAME:
        raise InvalidRequest(f"nickname must be at most {MAX_NICKNAME} characters.")
    for character in nickname:
        if unicodedata.category(character) in REFUSED_CATEGORIES and character != ZERO_WIDTH_JOINER:
            raise InvalidRequest(
                f"nickname must not contain control or invisible characters "
                f"(U+{ord(character):04X})."
            )
    return nickname


def check_avatar_url(value: str, own_prefix: str) -> str | None:
    """``value`` when it is an ``https://`` URL; None when it names an avatar this issuer
    serves (``own_prefix`` + an avatar id; the caller checks that it is the user's own).

    :raises InvalidRequest: anything else: another scheme, no host, credentials in it,
        spaces or control characters, or longer than 1024 characters.
    """
    if value.startswith(own_prefix) and AVATAR_ID.fullmatch(value[len(own_prefix) :]):
        return None
    refused = InvalidRequest("avatar_url must be an https:// URL or an avatar issuer serves.")
    if len(value) > MAX_AVATAR_URL or not value.isascii() or not value.isprintable():
        raise refused
    if " " in value or "\\" in value:
        raise refused
    try:
        parts = urlsplit(value)
        port = parts.port  # a malformed port raises here
    except ValueError:
        raise refused from None
    del port
    if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        raise refused
    return value


def own_avatar_id(value: str, own_prefix: str) -> str | None:
    """The avatar id of an ``avatar_url`` this issuer serves, else None."""
    if value.startswith(own_prefix):
        rest = value[len(own_prefix) :]
        if AVATAR_ID.fullmatch(rest):
            return rest
    return None


def reencode_avatar(data: bytes, owner: str) -> Avatar:
    """Decode ``data``, shrink it to fit :data:`AVATAR_SIDE`, re-encode it as WebP.

    :param owner: the user id; part of the avatar's id, so two users uploading the same
        picture get two avatars, and deleting one user's never removes the other's.
    :raises ImageTooLarge: the image declares more than :data:`MAX_AVATAR_PIXELS` pixels.
    :raises InvalidRequest: not an image of an accepted format, or a broken one.
    """
    not_an_image = InvalidRequest("The body is not a JPEG, PNG, WebP or GIF image.")
    if not data:
        raise InvalidRequest("The image is missing.")
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own bomb threshold; our cap below is the one that holds.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS) as opened:
                # Only the header has been read so far: refuse a bomb before decoding it.
                width, height = opened.size
                if width <= 0 or height <= 0:
                    raise not_an_image
                if width * height > MAX_AVATAR_PIXELS:
                    raise ImageTooLarge(
                        f"The image has {width}x{height} pixels; at most "
                        f"{MAX_AVATAR_PIXELS // 1_000_000} million are accepted."
                    )
                opened.draft("RGB", (AVATAR_SIDE, AVATAR_SIDE))  # JPEG: decode scaled down
                # A phone's photo is stored sideways with an EXIF orientation: turn the pixels
                # the way the user saw them, since the EXIF itself is about to go.
                image = ImageOps.exif_transpose(opened)
                image = image.convert("RGBA" if _has_alpha(image) else "RGB")
                image.thumbnail((AVATAR_SIDE, AVATAR_SIDE), Image.Resampling.LANCZOS)
    except (ImageTooLarge, InvalidRequest):
        raise
    except Image.DecompressionBombError:
        # Pillow's own check, at open, for what declares more than twice its threshold.
        raise ImageTooLarge(
            f"The image has too many pixels; at most {MAX_AVATAR_PIXELS // 1_000_000} "
            "million are accepted."
        ) from None
    except UnidentifiedImageError:
        raise not_an_image from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, MemoryError):
        # Truncated or corrupt data surfaces as any of these from Pillow's decoders.
        raise not_an_image from None
    # A fresh image holding only the pixels: no info, no EXIF, no ICC profile carried over.
    clean = Image.new(image.mode, image.size)
    clean.paste(image)
    out = io.BytesIO()
    clean.save(out, format="WEBP", quality=AVATAR_QUALITY, method=4, exif=b"", icc_profile=None)
    encoded = out.getvalue()
    digest = hashlib.sha256(owner.encode() + b"\x00" + encoded).hexdigest()[:32]
    return Avatar(digest, AVATAR_TYPE, encoded, clean.width, clean.height)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
