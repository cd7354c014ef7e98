"""First local start: scripts/local-env (called by scripts/run) writes a .env with a
generated secret key, and every manage.py call reads it, so the login command
scripts/run prints works in a plain shell. Real environment variables win."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # every test runs manage.py or scripts/local-env as a process

ROOT = Path(__file__).resolve().parents[2]


def clean_env(tmp_path, **extra):
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DJANGO_", "DATABASE_", "REDIS_", "Q_", "WHATSAPP_"))
    }
    env.update(AIADMIN_ENV_FILE=str(tmp_path / ".env"), AIADMIN_VAR_DIR=str(tmp_path / "var"))
    env.update(extra)
    return env


def manage(tmp_path, code=None, **extra):
    command = ["shell", "-c", code] if code else ["check"]
    return subprocess.run(
        [sys.executable, "manage.py", *command],
        cwd=ROOT,
        env=clean_env(tmp_path, **extra),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_local_env_manage_py_says_what_to_set(tmp_path):
    result = manage(tmp_path)
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is not set" in result.stderr


def test_the_first_start_writes_a_local_env_that_manage_py_reads(tmp_path):
    subprocess.run(["scripts/local-env"], cwd=ROOT, env=clean_env(tmp_path), check=True)
    text = (tmp_path / ".env").read_text()
    key = next(
        line.split("=", 1)[1] for line in text.splitlines() if line.startswith("DJANGO_SECRET_KEY=")
    )
    assert len(key) >= 50 and "DJANGO_DEBUG=1" in text and "DJANGO_ALLOWED_HOSTS=" in text
    assert oct((tmp_path / ".env").stat().st_mode & 0o777) == "0o600"

    result = manage(tmp_path, "from django.conf import settings; print(settings.SECRET_KEY)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == key

    # A second start keeps the file (and so the key: sessions survive restarts).
    subprocess.run(["scripts/local-env"], cwd=ROOT, env=clean_env(tmp_path), check=True)
    assert (tmp_path / ".env").read_text() == text


def test_a_real_environment_variable_wins_over_the_local_env(tmp_path):
    subprocess.run(["scripts/local-env"], cwd=ROOT, env=clean_env(tmp_path), check=True)
    real = "k" * 60
    result = manage(
        tmp_path,
        "from django.conf import settings; print(settings.SECRET_KEY)",
        DJANGO_SECRET_KEY=real,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == real


@pytest.mark.parametrize("script", ["scripts/run", "scripts/demo"])
def test_a_start_script_writes_the_local_env_before_printing_the_login_command(script):
    """The printed `manage.py createsuperuser` must work as printed (issue 21): it
    reads the .env scripts/local-env writes, so the script runs that first."""
    text = (ROOT / script).read_text()
    assert "\nscripts/local-env" in text
    assert text.index("\nscripts/local-env") < text.index("createsuperuser")
