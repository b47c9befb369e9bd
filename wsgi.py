"""The production entry point: ``gunicorn wsgi:app`` (with ``gunicorn.conf.py``).

Development mode is refused here: the WeChat emulator runs under ``issuer dev`` only.
"""

import sys

from issuer import StartupError, create_app

try:
    app = create_app(entry="wsgi")
except StartupError as error:
    # One line naming the setting, not a traceback; gunicorn stops on a failed boot.
    sys.exit(f"issuer: {error}")
