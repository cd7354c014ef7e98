"""Settings for a web server that a test starts in a subprocess (daphne in the
browser test): the databases the test process uses, and cookies over plain
HTTP on the loopback interface.

The test passes its own database locations: DATABASE_URL for the default
database, and AIADMIN_TEST_CHANNELS_DB for the SQLite channel layer, so that
both processes share one channel layer on the embedded default too.
"""

import os

from tests.settings import *  # noqa: F403

_channels_db = os.environ.get("AIADMIN_TEST_CHANNELS_DB", "")
if _channels_db and "channels" in DATABASES:  # noqa: F405
    DATABASES["channels"]["NAME"] = _channels_db  # noqa: F405

SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
SECURE_SSL_REDIRECT = False
SECURE_HSTS_SECONDS = 0
