"""The key ring of this process, kept in step with the key directory shared by every process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from ..errors import KeyFileError
from .directory import KeyDirectory
from .ring import KeyPolicy, KeyRing, SigningKey

log = logging.getLogger("issuer.keys")

# How often a process looks at the manifest for changes made by other processes.
CHECK_INTERVAL = 1.0


class KeyManager:
    """This process's current key ring, kept in step with the key directory.

    At most once a second (monotonic clock) it looks at the manifest's ``stat``; the ring is
    rebuilt only when the manifest changed (a rotation or revocation by any process or host)
    or a state change by the clock is due. Requests never read key files.
    """

    def __init__(
        self,
        directory: KeyDirectory,
        policy: KeyPolicy,
        *,
        data_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        check_interval: float = CHECK_INTERVAL,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self.data_key = data_key
        self.clock = clock
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._ring = directory.load(policy, data_key=data_key, now=clock())
        self._fingerprint = directory.fingerprint()
        self._checked = time.monotonic()

    def __call__(self) -> KeyRing:
        """The current ring (cheap: a clock read on almost every call)."""
        if time.monotonic() - self._checked >= self.check_interval:
            self._refresh(blocking=False)
        return self._ring

    def fresh(self) -> KeyRing:
        """The ring, reloaded first if the manifest changed (one ``stat``).

        For the JWKS and for unknown kids: a key another process just made active (``keys
        rotate --now``, revoking the active key) must be published and verifiable by every
        process before the first token it signed can reach them.
        """
        if self.directory.fingerprint() != self._fingerprint:
            self._refresh(blocking=True)
        return self()

    def verification_key(self, kid: str) -> SigningKey | None:
        """The published key with this kid, looking at the directory again if it is unknown."""
        return self().verification_key(kid) or self.fresh().verification_key(kid)

    def reload(self) -> KeyRing:
        """Rebuild the ring now, whatever changed."""
        with self._lock:
            self._ring = self.directory.load(self.policy, data_key=self.data_key, now=self.clock())
            self._fingerprint = self.directory.fingerprint()
            self._checked = time.monotonic()
        return self._ring

    def _refresh(self, *, blocking: bool) -> None:
        """Rebuild the ring if the manifest changed or a state change by the clock is due.

        Not ``blocking``: when another thread is already at it, keep the current ring.
        """
        if not self._lock.acquire(blocking=blocking):
            return
        try:
            self._checked = time.monotonic()
            fingerprint = self.directory.fingerprint()
            if fingerprint == self._fingerprint and self.clock() < self._ring.valid_until:
                return
            try:
                self._ring = self.directory.load(
                    self.policy, data_key=self.data_key, now=self.clock()
                )
            except KeyFileError:
                # A broken change must not take a serving process down: keep signing with
                # the ring it has, and say so loudly.
                log.exception("key directory changed but cannot be loaded; keeping the old ring")
                return
            self._fingerprint = self.directory.fingerprint()
        finally:
            self._lock.release()
