"""Web login's OAuth 2.0 core, pure (no Flask, no I/O): PKCE, issuer's own ``state`` for the
WeChat round trip, authorization codes and scan tickets.

``pkce`` is RFC 7636; ``grants`` holds the authorization request, the code grant's checks
(RFC 6749 §4.1.3, with PKCE as its extension) and the scan ticket's life cycle. The store
keeps what these describe, so any host of a fleet can continue what another began.
"""
