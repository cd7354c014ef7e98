"""Failed authentication is throttled: per client address (wrong, revoked or
expired keys, and calls without any credentials) and per API key (wrong secrets
for a real key's prefix, from any address). Over the limit: 429 with Retry-After
in the one error shape. The right key keeps working from every other address,
even while its own prefix is being guessed."""

import os
import secrets
import subprocess
import sys
import time

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from .conftest import key_client

pytestmark = pytest.mark.django_db

SESSIONS = "/api/v1/whatsapp/sessions/"
LIMIT = 5


@pytest.fixture(autouse=True)
def five_failures_per_minute(settings):
    settings.API_AUTH_FAILURE_RATES = {"address": f"{LIMIT}/min", "key": f"{LIMIT}/min"}
    # The counters are per fixed minute (aiadmin/api/auth_failures.py): a test's
    # requests must not straddle a window's end, or its counts start again.
    left = 60 - time.time() % 60
    if left < 15:
        time.sleep(left + 0.05)


def random_key():
    return f"{secrets.token_hex(4)}.{secrets.token_urlsafe(24)}"


def get(client, address, path=SESSIONS):
    return client.get(path, REMOTE_ADDR=address)


def assert_throttled(response):
    assert response.status_code == 429, (response.status_code, response.content[:300])
    assert response.json()["error"]["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60


def wrong_secret_for(raw_key):
    prefix = raw_key.partition(".")[0]
    return f"{prefix}.{secrets.token_urlsafe(24)}"


def test_random_keys_from_one_address_are_throttled_after_a_few_failures(keys):
    statuses = [get(key_client(random_key()), "203.0.113.7").status_code for _ in range(LIMIT)]
    assert statuses == [401] * LIMIT
    assert_throttled(get(key_client(random_key()), "203.0.113.7"))


def test_a_flooded_address_is_refused_even_with_a_right_key(keys):
    for _ in range(LIMIT):
        get(key_client(random_key()), "203.0.113.7")
    assert_throttled(get(key_client(keys["a"]), "203.0.113.7"))


def test_the_right_key_keeps_working_from_another_address_during_a_flood(keys):
    for _ in range(LIMIT * 3):
        get(key_client(random_key()), "203.0.113.7")
        get(key_client(wrong_secret_for(keys["a"])), "203.0.113.7")
    assert get(key_client(keys["a"]), "198.51.100.20").status_code == 200
    assert get(key_client(random_key()), "198.51.100.20").status_code == 401


def test_wrong_secrets_for_a_real_prefix_are_throttled_across_addresses(keys):
    """A guess spread over many addresses (each under its own limit) still meets the
    per-key limit: wrong secrets for that prefix then get 429 from every address."""
    for i in range(LIMIT):
        response = get(key_client(wrong_secret_for(keys["a"])), f"192.0.2.{i + 1}")
        assert response.status_code == 401
    assert_throttled(get(key_client(wrong_secret_for(keys["a"])), "192.0.2.100"))
    # ...while the real owner, from any address, is served, and other keys are untouched.
    assert get(key_client(keys["a"]), "198.51.100.20").status_code == 200
    assert get(key_client(keys["a"]), "192.0.2.1").status_code == 200
    assert get(key_client(wrong_secret_for(keys["b"])), "192.0.2.101").status_code == 401


def test_revoked_and_expired_keys_count_as_failures(keys):
    for _ in range(LIMIT):
        assert get(key_client(keys["a_revoked"]), "203.0.113.9").status_code == 401
    assert_throttled(get(key_client(keys["a_expired"]), "203.0.113.9"))


def test_calls_without_credentials_are_throttled_per_address(db):
    for _ in range(LIMIT):
        assert get(APIClient(), "203.0.113.50").status_code == 401
    assert_throttled(get(APIClient(), "203.0.113.50"))
    assert get(APIClient(), "203.0.113.51").status_code == 401


def test_keyless_failures_and_key_failures_share_the_address_budget(keys):
    for _ in range(LIMIT - 1):
        get(APIClient(), "203.0.113.60")
    assert get(key_client(random_key()), "203.0.113.60").status_code == 401
    assert_throttled(get(APIClient(), "203.0.113.60"))


def test_successful_calls_do_not_count_as_failures(keys):
    for _ in range(LIMIT * 2):
        assert get(key_client(keys["a"]), "203.0.113.70").status_code == 200
    assert get(key_client(random_key()), "203.0.113.70").status_code == 401


def test_endpoints_open_to_anyone_do_not_count_anonymous_calls(db):
    for _ in range(LIMIT + 1):
        assert get(APIClient(), "203.0.113.80", "/api/v1/health").status_code in (200, 503)
    assert get(APIClient(), "203.0.113.80").status_code == 401


def test_a_forged_forwarded_for_header_does_not_escape_the_address_limit(keys, settings):
    settings.NUM_PROXIES = 0  # the default: no proxy in front, X-Forwarded-For is ignored
    for i in range(LIMIT):
        key_client(random_key()).get(
            SESSIONS, REMOTE_ADDR="203.0.113.90", HTTP_X_FORWARDED_FOR=f"10.9.9.{i}"
        )
    assert_throttled(
        key_client(random_key()).get(
            SESSIONS, REMOTE_ADDR="203.0.113.90", HTTP_X_FORWARDED_FOR="10.9.9.250"
        )
    )


def test_behind_one_proxy_the_address_it_saw_is_the_client(keys, settings):
    settings.NUM_PROXIES = 1
    proxy = "10.0.0.2"
    for _ in range(LIMIT):
        key_client(random_key()).get(
            SESSIONS, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="forged, 203.0.113.91"
        )
    flooded = key_client(keys["a"]).get(
        SESSIONS, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="anything, 203.0.113.91"
    )
    assert_throttled(flooded)
    other = key_client(keys["a"]).get(
        SESSIONS, REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.91, 198.51.100.7"
    )
    assert other.status_code == 200


def test_crossing_a_limit_is_logged_once_naming_the_key(keys, caplog, tenants):
    for i in range(LIMIT * 2):
        get(key_client(wrong_secret_for(keys["a"])), f"192.0.2.{i + 1}")
    prefix = keys["a"].partition(".")[0]
    lines = [r.getMessage() for r in caplog.records if prefix in r.getMessage()]
    assert len(lines) == 1, lines
    assert tenants.a.name in lines[0] or str(tenants.a.pk) in lines[0]


@pytest.mark.e2e
def test_the_failure_rates_are_set_from_the_environment():
    env = {
        **os.environ,
        "API_AUTH_FAILURE_RATE": "7/min",
        "API_KEY_FAILURE_RATE": "3/hour",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from django.conf import settings as s; print(s.API_AUTH_FAILURE_RATES)",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=settings.BASE_DIR,
    ).stdout
    assert out.strip() == "{'address': '7/min', 'key': '3/hour'}"


@pytest.mark.e2e
@pytest.mark.redis
@pytest.mark.skipif(not settings.REDIS_URL, reason="runs in the PostgreSQL + Redis pass")
def test_with_redis_failures_counted_by_another_process_block_here(keys, settings):
    """Another web process (a real one: its own interpreter and Redis connection)
    counts the failures; this process refuses the address."""
    script = (
        "import django; django.setup()\n"
        "from types import SimpleNamespace\n"
        "from django.conf import settings\n"
        "from aiadmin.api.auth_failures import AuthFailures\n"
        f"settings.API_THROTTLE_NAMESPACE = {settings.API_THROTTLE_NAMESPACE!r}\n"
        f"settings.API_AUTH_FAILURE_RATES = {settings.API_AUTH_FAILURE_RATES!r}\n"
        "request = SimpleNamespace(META={'REMOTE_ADDR': '203.0.113.99'})\n"
        f"for _ in range({LIMIT}): AuthFailures(request).failed()\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        cwd=settings.BASE_DIR,
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert_throttled(get(key_client(keys["a"]), "203.0.113.99"))
    assert get(key_client(keys["a"]), "203.0.113.100").status_code == 200


def test_an_unreachable_counter_store_does_not_break_authentication(keys, settings, caplog):
    settings.CACHES = {
        **settings.CACHES,
        "api_throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 1},
        },
    }
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_CLASSES": []}
    assert get(key_client(random_key()), "203.0.113.98").status_code == 401
    assert get(key_client(keys["a"]), "203.0.113.98").status_code == 200
    assert "failure store unavailable" in caplog.text
