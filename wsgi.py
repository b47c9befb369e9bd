"""The production entry point: ``gunicorn wsgi:app`` (with ``gunicorn.conf.py``)."""

import sys

from issuer import StartupError, create_app

try:
    app = create_app()
except StartupError as error:
    # One line naming the setting, not a traceback; gunicorn stops on a failed boot.
    sys.exit(f"issuer: {error}")
