"""The companies' model API keys, encrypted at rest (Fernet, AES-128-CBC + HMAC).

Keys come from ASSISTANT_ENCRYPTION_KEYS (comma-separated Fernet keys, newest
first): the first encrypts, every one decrypts (MultiFernet), so a key is
rotated by putting a new one in front, running `manage.py
rotate_assistant_keys` (re-encrypts every stored key with the first) and then
dropping the old one. Without the setting a key is derived from
DJANGO_SECRET_KEY (the deploy check assistant.W001 says so): rotating the
secret key then makes stored API keys unreadable.

A decrypted key only ever lives in the call that uses it: nothing here logs
it, and `SecretError` names no key material.
"""

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretError(Exception):
    """A stored secret cannot be decrypted with any configured key."""


def configured_keys():
    """The Fernet keys, newest first (derived from SECRET_KEY when none is set)."""
    keys = [k.strip() for k in settings.ASSISTANT_ENCRYPTION_KEYS if k.strip()]
    if keys:
        return keys
    digest = hashlib.sha256(b"aiadmin.assistant.secrets|" + settings.SECRET_KEY.encode()).digest()
    return [base64.urlsafe_b64encode(digest).decode()]


def _box():
    return MultiFernet([Fernet(key) for key in configured_keys()])


def encrypt(plaintext):
    return _box().encrypt(plaintext.encode()).decode() if plaintext else ""


def decrypt(token):
    if not token:
        return ""
    try:
        return _box().decrypt(token.encode()).decode()
    except (InvalidToken, ValueError):
        raise SecretError(
            "the stored API key cannot be decrypted with ASSISTANT_ENCRYPTION_KEYS "
            "(a key was removed before `rotate_assistant_keys` ran?): enter the API key again"
        ) from None


def rotate(token):
    """`token` re-encrypted with the newest key (unchanged if empty)."""
    if not token:
        return token
    try:
        return _box().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretError("a stored API key cannot be decrypted with any configured key") from None
