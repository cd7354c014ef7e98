"""Settings: production passes `check --deploy` with no warnings; misconfiguration
fails at start with one clear message. Each case is a real `manage.py` process
with its own environment (settings are read once per process)."""

import os
import subprocess
import sys

import pytest
from django.core.management import call_command

from tests.e2e_processes import ROOT

SECRET = "k3P9-deploy-test-secret-" + "x7Qz" * 12  # 72 characters, not a real secret
PRODUCTION = {
    "DJANGO_DEBUG": "0",
    "DJANGO_SECRET_KEY": SECRET,
    "DJANGO_ALLOWED_HOSTS": "admin.example.com",
    "DATABASE_URL": "postgres://aiadmin:pw@db.example.com:5432/aiadmin",
    "REDIS_URL": "redis://redis.example.com:6379/0",
    "Q_BROKER": "redis",
    # Where alerts go and who may read /metrics (deploy checks of their own).
    "DJANGO_ADMINS": "ops@example.com",
    "EMAIL_URL": "smtp+tls://alerts:pw@smtp.example.com:587",
    "METRICS_TOKEN": "metrics-token-for-the-deploy-test",
    # A dedicated Fernet key for the AI assistant's stored API keys (assistant.W001).
    "ASSISTANT_ENCRYPTION_KEYS": "mR3oV7y8QmJ0XrP4K1nS2tU5wZ6aB9cD0eF1gH2iJ3k=",
}


def manage(tmp_path, *args, **env_vars):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(
            ("DJANGO_", "DATABASE_", "REDIS_", "Q_", "WHATSAPP_", "EMAIL_", "METRICS_",
                 "ASSISTANT_")
        )
    }
    env.update(
        DJANGO_SETTINGS_MODULE="aiadmin.settings",
        AIADMIN_VAR_DIR=str(tmp_path),
        # Not the checkout's .env (scripts/run writes one with a secret key).
        AIADMIN_ENV_FILE=str(tmp_path / "no.env"),
    )
    env.update({k: v for k, v in env_vars.items() if v is not None})
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.e2e
def test_production_settings_pass_the_deploy_check_with_no_warnings(tmp_path):
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNINGS" not in result.stderr + result.stdout


@pytest.mark.e2e
def test_the_embedded_default_is_flagged_by_the_deploy_check(tmp_path):
    env = dict(PRODUCTION, DATABASE_URL=None, REDIS_URL=None, Q_BROKER=None)
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "whatsapp.W001" in output and "whatsapp.W002" in output


@pytest.mark.e2e
def test_a_short_secret_is_flagged_by_the_deploy_check(tmp_path):
    env = dict(PRODUCTION, DJANGO_SECRET_KEY="short-secret")
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode != 0
    assert "security.W009" in result.stdout + result.stderr


@pytest.mark.e2e
def test_metrics_opened_without_a_token_are_flagged_by_the_deploy_check(tmp_path):
    env = dict(PRODUCTION, METRICS_TOKEN=None, METRICS_PUBLIC="1")
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode != 0
    assert "whatsapp.W004" in result.stdout + result.stderr
    # With neither, /metrics refuses every scrape: closed, so nothing to warn about.
    env = dict(PRODUCTION, METRICS_TOKEN=None)
    result = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            {"DATABASE_URL": "mysql://u:p@db.example.com/aiadmin"},
            "DATABASE_URL must be postgres://... (or sqlite:///...), not "
            "'django.db.backends.mysql'.",
        ),
        (
            {"DATABASE_URL": "ftp://db.example.com/aiadmin"},
            "DATABASE_URL must be postgres://... (or sqlite:///...), not 'ftp'.",
        ),
        ({"DATABASE_URL": "nonsense"}, "DATABASE_URL must be postgres://"),
        (
            {"DATABASE_URL": "postgres://db.example.com:notaport/x"},
            "DATABASE_URL is not a valid database URL",
        ),
        ({"REDIS_URL": None}, "Q_BROKER=redis needs REDIS_URL."),
        (
            {"REDIS_URL": "http://redis.example.com:6379"},
            "REDIS_URL must start with redis://, rediss:// or unix://",
        ),
        ({"Q_BROKER": "rabbitmq"}, "Q_BROKER must be 'orm' or 'redis'."),
        ({"DJANGO_SECRET_KEY": None}, "DJANGO_SECRET_KEY is not set."),
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY is not set."),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ALLOWED_HOSTS is empty."),
        (
            {"WHATSAPP_EXTRA_INBOUND_HANDLERS": "{ai: myapp.ai}"},
            "WHATSAPP_EXTRA_INBOUND_HANDLERS is not valid JSON",
        ),
        (
            {"WHATSAPP_EXTRA_INBOUND_HANDLERS": '["myapp.ai"]'},
            "WHATSAPP_EXTRA_INBOUND_HANDLERS must be a JSON object",
        ),
    ],
    ids=[
        "database scheme",
        "database URL scheme ftp",
        "database URL without scheme",
        "database URL with a bad port",
        "redis broker without REDIS_URL",
        "redis URL scheme",
        "unknown broker",
        "no secret",
        "empty secret",
        "no allowed hosts",
        "extra handlers not JSON",
        "extra handlers not an object",
    ],
)
@pytest.mark.e2e
def test_a_misconfiguration_fails_at_start_with_a_clear_message(tmp_path, overrides, message):
    env = dict(PRODUCTION)
    for key, value in overrides.items():
        env.pop(key, None)
        if value is not None:
            env[key] = value
    result = manage(tmp_path, "check", **env)
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("django.core.exceptions.ImproperlyConfigured: "), result.stderr
    assert message in last_line


@pytest.mark.e2e
def test_debug_without_a_secret_runs_on_a_development_key(tmp_path):
    result = manage(tmp_path, "check", DJANGO_DEBUG="1")
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


@pytest.mark.django_db(databases="__all__")
def test_the_models_have_no_migrations_missing():
    # Raises SystemExit(1) when a model change has no migration.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.e2e
def test_the_assistant_key_setting_is_checked(tmp_path):
    derived = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING",
                     **{**PRODUCTION, "ASSISTANT_ENCRYPTION_KEYS": None})
    assert derived.returncode != 0 and "assistant.W001" in derived.stdout + derived.stderr
    broken = manage(tmp_path, "check", **{**PRODUCTION, "ASSISTANT_ENCRYPTION_KEYS": "not-a-key"})
    assert broken.returncode != 0 and "assistant.E001" in broken.stdout + broken.stderr

