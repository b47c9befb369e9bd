"""Signing keys and data keys.

- :mod:`.ring`: the life cycle as pure functions of the manifest and the clock, JWKs and
  thumbprints, and the :class:`KeyRing` a process signs with (no I/O);
- :mod:`.directory`: the files of ``ISSUER_KEYS_DIR`` -- manifest, key files, locks;
- :mod:`.manager`: this process's ring, kept in step with the directory; fails closed;
- :mod:`.matching`: the data keys' check values, proving the keys match the database;
- :mod:`.reseal`: re-sealing stored secrets after a data-key rotation.
"""

from .directory import KeyDirectory
from .manager import KeyManager
from .ring import KeyPolicy, KeyRing, KeyStatus, SigningKey

__all__ = ["KeyDirectory", "KeyManager", "KeyPolicy", "KeyRing", "KeyStatus", "SigningKey"]
