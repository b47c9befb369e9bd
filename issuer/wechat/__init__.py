"""Everything that speaks WeChat.

- :mod:`.client`: the HTTP client of WeChat's server API (the only module here that does I/O
  against WeChat), errcodes mapped to issuer's errors;
- :mod:`.crypto`: decrypting and checking user data with a ``session_key`` (pure);
- :mod:`.servertoken`: the shared server access token, cached in the store;
- :mod:`.emulator`: a stand-in for WeChat, for development mode and tests.
"""
