"""Test-only environment defaults, set before Django reads its settings."""

import os

os.environ.setdefault(
    "DJANGO_SECRET_KEY", "test-only-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
)
os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")
os.environ.setdefault("DJANGO_SECURE_SSL_REDIRECT", "0")

from aiadmin.settings import *  # noqa: E402,F403

# The suite creates users in most tests; the real hasher costs ~0.5 s per user.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The assistant's tests talk to a model server on loopback (tests/assistant/model_server.py).
ASSISTANT = {**ASSISTANT, "ALLOW_PRIVATE_ENDPOINTS": True}  # noqa: F405
