"""WeChat server access tokens, shared by every worker and host through the store.

WeChat keeps one valid server access token per app; when each process fetches its own, every
fetch can invalidate the others' (the classic multi-worker outage). Here the token lives in
the store, sealed, and exactly one process at a time refreshes it, holding a lease taken with
one atomic statement. The others keep using the current token while it is valid, or wait
for the refresher. ``cgi-bin/stable_token`` in normal mode also returns the same token to
concurrent callers, so even a lease that runs out cannot fork the token.

Normal mode returns the *same* token for as long as it is valid, with its remaining lifetime,
so "refreshing ahead of expiry" means asking again from ``REFRESH_AHEAD`` seconds before the
expiry, at most every ``REFETCH_INTERVAL`` seconds, until WeChat hands out the next token.
``force_refresh`` (limited to a few calls a day, and it invalidates the token every other
process holds) is used only when WeChat rejects a token that normal mode still returns.
https://developers.weixin.qq.com/miniprogram/dev/OpenApiDoc/mp-access-token/getStableAccessToken.html
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable

from ..config import WeChatApp
from ..errors import TemporarilyUnavailable
from ..sealing import Seals, UnsealError, server_token_aad
from ..store import ServerToken, Store
from .client import WeChatClient

log = logging.getLogger("issuer.servertoken")

# Start asking for the next token this long before WeChat's expiry ...
REFRESH_AHEAD = 60.0
# ... but no more often than this while WeChat still returns the current one.
REFETCH_INTERVAL = 15.0
# How long one process may hold the refresh; beyond it another may take over.
LEASE_SECONDS = 15.0
POLL_SECONDS = 0.05


class ServerTokens:
    """Hands out each app's current server access token, refreshing it when due."""

    def __init__(
        self,
        store: Store,
        wechat: WeChatClient,
        sealer: Seals,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.wechat = wechat
        self.sealer = sealer
        self.clock = clock
        self.sleep = sleep
        self.owner = secrets.token_hex(8)  # this process, in lease records

    def get(self, app: WeChatApp) -> str:
        """The current token; fetched or refreshed first when missing or due.

        :raises IssuerError: WeChat failed, or no token came within the wait.
        """
        return self._obtain(app, rejected=None)

    def replace(self, app: WeChatApp, rejected: str) -> str:
        """A token other than ``rejected``, which WeChat just refused (40001/40014/42001).

        If another process already replaced it, that replacement is used; otherwise WeChat is
        asked in normal mode, and with ``force_refresh`` only if that returns the same token.
        """
        return self._obtain(app, rejected=rejected)

    def _obtain(self, app: WeChatApp, rejected: str | None) -> str:
        deadline = self.clock() + LEASE_SECONDS + self.wechat.timeout
        while True:
            now = self.clock()
            cached = self.store.get_server_token(app.appid)
            token = self._usable(app, cached, now, margin=0.0)
            if token is not None and token != rejected and not self._due(cached, now):
                return token
            seen = cached.fetched_at if cached else None
            if self.store.take_server_token_lease(
                app.appid, self.owner, now, now + LEASE_SECONDS, seen
            ):
                return self._refresh(app, rejected)
            # Someone else is refreshing: a token still inside its lifetime will do meanwhile.
            token = self._usable(app, cached, now, margin=0.0)
            if token is not None and token != rejected:
                return token
            if now >= deadline:
                raise TemporarilyUnavailable("WeChat's server token is being refreshed; retry.")
            self.sleep(POLL_SECONDS)

    @staticmethod
    def _due(cached: ServerToken | None, now: float) -> bool:
        if cached is None or cached.expires_at is None:
            return True
        if now < cached.expires_at - REFRESH_AHEAD:
            return False
        return cached.fetched_at is None or now >= cached.fetched_at + REFETCH_INTERVAL

    def _refresh(self, app: WeChatApp, rejected: str | None) -> str:
        try:
            fresh = self.wechat.stable_token(app)
            if rejected is not None and fresh.token == rejected:
                fresh = self.wechat.stable_token(app, force_refresh=True)
        except BaseException:
            self.store.release_server_token_lease(app.appid, self.owner)
            raise
        now = self.clock()
        sealed = self.sealer.seal(fresh.token.encode(), server_token_aad(app.appid))
        self.store.put_server_token(app.appid, sealed, now + fresh.expires_in, now)
        log.info("server access token fetched for app %s (%ds left)", app.appid, fresh.expires_in)
        return fresh.token

    def _usable(
        self, app: WeChatApp, cached: ServerToken | None, now: float, *, margin: float
    ) -> str | None:
        if cached is None or cached.token is None or cached.expires_at is None:
            return None
        if now >= cached.expires_at - margin:
            return None
        try:
            return self.sealer.open(cached.token, server_token_aad(app.appid)).decode()
        except UnsealError:
            log.error("cached server token of app %s cannot be decrypted", app.appid)
            return None
