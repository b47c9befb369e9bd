"""The key ring of this process, kept in step with the key directory shared by every process.

It fails closed: when a change to the directory cannot be read (a file written by another
user, a corrupt manifest, a vanished directory) the process stops signing and verifying
until it can read it again -- every call answers :class:`KeyRingUnavailable` (503
``temporarily_unavailable``) and ``/readyz`` says why -- rather than go on with a ring that
may still hold a key the operator has just revoked.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from ..errors import KeyFileError, TemporarilyUnavailable
from .directory import KeyDirectory
from .ring import KeyPolicy, KeyRing, SigningKey

log = logging.getLogger("issuer.keys")

# How often a process looks at the manifest for changes made by other processes.
CHECK_INTERVAL = 1.0
# How long a request may take from reading the ring (to seal a secret with the active data
# key) to committing the row: its writes give up sooner (SQLite's busy timeout, 5 s;
# PostgreSQL's pool wait and statement timeout) and answer 503. A data key is dropped only
# once every process switched away from it and this much more time has passed.
LONGEST_WRITE = 15.0


class KeyRingUnavailable(TemporarilyUnavailable):
    """The key directory changed and this process cannot read it: it serves no key at all."""

    default_description = "issuer cannot read its signing keys right now; retry shortly."

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class KeyManager:
    """This process's current key ring, kept in step with the key directory.

    At most once a second (monotonic clock) it looks at the manifest's ``stat``; the ring is
    rebuilt only when the manifest changed (a rotation or revocation by any process or host)
    or a state change by the clock is due. Requests never read key files.

    So no request is served with a ring older than ``check_interval``: the first call after
    the interval waits for the check (and the reload, if the manifest changed) before it gets
    a ring. When the reload fails, every call raises :class:`KeyRingUnavailable` until a
    later check succeeds (fail closed).
    """

    def __init__(
        self,
        directory: KeyDirectory,
        policy: KeyPolicy,
        *,
        data_key: bytes | None = None,
        clock: Callable[[], float] = time.time,
        check_interval: float = CHECK_INTERVAL,
        create: bool = True,
    ) -> None:
        """:param create: make the first keys if the directory has none (later reloads never
            do: a manifest that vanishes while serving fails closed).
        :raises KeyFileError: the directory cannot be read (:class:`NoKeys`: it holds no keys
            and ``create`` is False).
        """
        self.directory = directory
        self.policy = policy
        self.data_key = data_key
        self.clock = clock
        self.check_interval = check_interval
        self._lock = threading.Lock()
        self._ring = directory.load(policy, data_key=data_key, now=clock(), create=create)
        self._fingerprint = directory.fingerprint()
        self._checked = time.monotonic()
        # Why the directory cannot be read, while it cannot: no ring is served meanwhile.
        self.failure: str | None = None
        # What this process last reported to the directory: (pid, generation, failure).
        # Not at construction: under gunicorn --preload that is the master, which serves
        # nothing; each worker reports at its first check.
        self._reported: tuple[int, int, str | None] | None = None

    def __call__(self) -> KeyRing:
        """The current ring (cheap: a clock read on almost every call).

        :raises KeyRingUnavailable: the directory changed and cannot be read.
        """
        if time.monotonic() - self._checked >= self.check_interval:
            self._refresh()
        if self.failure is not None:
            raise KeyRingUnavailable()
        return self._ring

    def fresh(self) -> KeyRing:
        """The ring, reloaded first if the manifest changed (one ``stat``).

        For the JWKS and for unknown kids: a key another process just made active (``keys
        rotate --now``, revoking the active key) must be published and verifiable by every
        process before the first token it signed can reach them.
        """
        if self.directory.fingerprint() != self._fingerprint:
            self._refresh()
        return self()

    def verification_key(self, kid: str) -> SigningKey | None:
        """The published key with this kid, looking at the directory again if it is unknown."""
        return self().verification_key(kid) or self.fresh().verification_key(kid)

    def reload(self) -> KeyRing:
        """Rebuild the ring now, whatever changed."""
        with self._lock:
            self._ring = self.directory.load(
                self.policy, data_key=self.data_key, now=self.clock(), create=False
            )
            self._fingerprint = self.directory.fingerprint()
            self._checked = time.monotonic()
            self.failure = None
        return self._ring

    def _refresh(self) -> None:
        """Rebuild the ring if the manifest changed, a state change by the clock is due, or
        the last attempt failed.

        Other threads wait for it rather than go on with the ring it may be replacing.
        """
        with self._lock:
            try:
                self._check()
            finally:
                self._report()

    def _check(self) -> None:
        """One look at the directory (the lock held)."""
        self._checked = time.monotonic()
        fingerprint = self.directory.fingerprint()
        if (
            fingerprint == self._fingerprint
            and self.failure is None
            and self.clock() < self._ring.valid_until
        ):
            return
        try:
            self._ring = self.directory.load(
                self.policy, data_key=self.data_key, now=self.clock(), create=False
            )
        except KeyFileError as error:
            # Fail closed: the ring this process holds may carry a key that was just
            # revoked, so it neither signs nor verifies until the directory reads again.
            if self.failure is None:
                log.error("key directory cannot be read; serving no keys until it can: %s", error)
            self.failure = str(error)
            return
        if self.failure is not None:
            log.warning("key directory readable again; serving keys")
        self.failure = None
        self._fingerprint = self.directory.fingerprint()

    def _report(self) -> None:
        """Tell the directory which generation this process now serves, when that changed."""
        state = (os.getpid(), self._ring.generation, self.failure)
        if state != self._reported:
            self._reported = state
            self.directory.report(self._ring.generation, self.failure)
