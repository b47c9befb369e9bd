"""The user's account: the profile they fill in, their avatar, signing out everywhere and
deleting the account (China's PIPL; WeChat's review asks apps with accounts to offer it).

No Flask here: the views parse the request and call one method. The checks and the image
work are pure (:mod:`issuer.profile`); this module adds the store and the clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .errors import InvalidRequest, InvalidToken
from .profile import Avatar, check_avatar_url, check_nickname, own_avatar_id, reencode_avatar
from .store import Store, StoredAvatar

log = logging.getLogger("issuer.account")

AVATAR_PATH = "/avatars/"


class Accounts:
    """Profile edits, avatars, sign-out everywhere and deletion, over the store."""

    def __init__(
        self, store: Store, issuer_url: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.avatar_prefix = issuer_url.rstrip("/") + AVATAR_PATH
        self.clock = clock

    def avatar_url(self, avatar_id: str) -> str:
        """The public URL of a stored avatar."""
        return self.avatar_prefix + avatar_id

    def edit(self, user_id: str, *, nickname: str | None, avatar_url: str | None) -> None:
        """``PATCH /me``: set what was sent, checked.

        :raises InvalidRequest: nothing to change, a bad nickname, or a bad ``avatar_url``
            (which may name an avatar of this issuer only if it is the user's own).
        :raises InvalidToken: the user no longer exists.
        """
        if nickname is None and avatar_url is None:
            raise InvalidRequest("Send nickname, avatar_url, or both.")
        checked_nickname = check_nickname(nickname) if nickname is not None else None
        keep = None
        if avatar_url is not None:
            check_avatar_url(avatar_url, self.avatar_prefix)
            keep = own_avatar_id(avatar_url, self.avatar_prefix)
            if keep is not None:
                stored = self.store.get_avatar(keep)
                if stored is None or stored.user_id != user_id:
                    raise InvalidRequest("avatar_url names no avatar of this user.")
        if not self.store.edit_profile(
            user_id, nickname=checked_nickname, avatar_url=avatar_url, keep_avatar=keep
        ):
            raise InvalidToken("The user of this access token no longer exists.")
        log.info("profile edited user=%s", user_id)

    def upload_avatar(self, user_id: str, data: bytes) -> Avatar:
        """``PUT /me/avatar``: re-encode ``data`` and make it the user's avatar.

        :raises InvalidRequest: not an accepted image (:class:`issuer.profile.ImageTooLarge`
            for too many pixels).
        :raises InvalidToken: the user no longer exists.
        """
        avatar = reencode_avatar(data, user_id)
        stored = StoredAvatar(avatar.id, user_id, avatar.content_type, avatar.image, self.clock())
        if not self.store.put_avatar(stored, self.avatar_url(avatar.id)):
            raise InvalidToken("The user of this access token no longer exists.")
        log.info(
            "avatar stored user=%s avatar=%s %dx%d %d bytes",
            user_id,
            avatar.id,
            avatar.width,
            avatar.height,
            len(avatar.image),
        )
        return avatar

    def avatar(self, avatar_id: str) -> StoredAvatar | None:
        """A stored avatar by id; None for an unknown or malformed id."""
        if own_avatar_id(self.avatar_url(avatar_id), self.avatar_prefix) is None:
            return None
        return self.store.get_avatar(avatar_id)

    def sign_out_everywhere(self, user_id: str) -> int:
        """End every live session of the user. :returns: how many ended."""
        ended = self.store.revoke_user_sessions(user_id, self.clock())
        log.info("signed out everywhere user=%s sessions=%d", user_id, ended)
        return ended

    def delete(self, user_id: str) -> bool:
        """Delete the account and everything personal of it. :returns: False if unknown."""
        deleted = self.store.delete_user(user_id)
        if deleted:
            log.info("account deleted user=%s", user_id)
        return deleted
