"""System checks for the assistant's settings."""

from cryptography.fernet import Fernet
from django.conf import settings
from django.core.checks import Error, Warning, register


@register()
def check_encryption_keys(app_configs, **kwargs):
    errors = []
    for number, key in enumerate(settings.ASSISTANT_ENCRYPTION_KEYS, start=1):
        try:
            Fernet(key.strip())
        except (ValueError, TypeError):
            errors.append(
                Error(
                    f"ASSISTANT_ENCRYPTION_KEYS: key {number} is not a Fernet key (32 url-safe "
                    'base64-encoded bytes); generate one with `python -c "from '
                    'cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`.',
                    id="assistant.E001",
                )
            )
    if settings.ASSISTANT["REPLY_DEADLINE"] >= settings.Q_CLUSTER["timeout"]:
        errors.append(
            Error(
                "ASSISTANT_REPLY_DEADLINE must be below the job timeout (Q_CLUSTER timeout), "
                "or a slow model gets the job killed instead of the fallback message.",
                id="assistant.E002",
            )
        )
    return errors


@register(deploy=True)
def check_dedicated_key(app_configs, **kwargs):
    if settings.ASSISTANT_ENCRYPTION_KEYS:
        return []
    return [
        Warning(
            "ASSISTANT_ENCRYPTION_KEYS is not set: the companies' model API keys are encrypted "
            "with a key derived from DJANGO_SECRET_KEY, so rotating the secret key makes them "
            "unreadable. Set a dedicated Fernet key (docs/assistant.md).",
            id="assistant.W001",
        )
    ]
