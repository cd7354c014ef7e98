"""Rate limits: one bucket per API key (per user for staff sessions), a
stricter bucket for sending, rates from settings; 429 with Retry-After."""

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.test import override_settings

from companies.models import CompanyAPIKey

from .conftest import key_client

SESSIONS = "/api/v1/whatsapp/sessions/"


def rates(api, send):
    return override_settings(
        REST_FRAMEWORK={
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"api": api, "send": send},
        }
    )


@pytest.fixture
def three_per_minute():
    with rates("3/min", "2/min"):
        yield


@pytest.mark.usefixtures("three_per_minute")
def test_a_key_over_its_rate_gets_a_429_with_retry_after(api_a, tenants):
    for _ in range(3):
        assert api_a.get(SESSIONS).status_code == 200
    response = api_a.get(SESSIONS)
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60


@pytest.mark.usefixtures("three_per_minute")
def test_each_key_has_its_own_bucket(callers, tenants):
    for _ in range(4):
        callers["owner_key"].get(SESSIONS)
    assert callers["owner_key"].get(SESSIONS).status_code == 429
    assert callers["other_key"].get(SESSIONS).status_code == 200
    _, second_a_key = CompanyAPIKey.objects.create_key(company=tenants.a, name="a second")
    assert key_client(second_a_key).get(SESSIONS).status_code == 200


@pytest.mark.usefixtures("three_per_minute")
def test_staff_sessions_are_limited_per_user(callers, tenants):
    for _ in range(3):
        assert callers["owner"].get(SESSIONS).status_code == 200
    assert callers["owner"].get(SESSIONS).status_code == 429
    assert callers["member"].get(SESSIONS).status_code == 200


def test_sending_has_its_own_stricter_bucket(api_a, tenants):
    outbound = f"{SESSIONS}{tenants.a.pk}/outbound/"
    body = {"to": "+491707654321", "text": "hi"}
    with rates("100/min", "2/min"):
        assert api_a.post(outbound, body, format="json").status_code == 202
        assert api_a.post(outbound, body, format="json").status_code == 202
        assert api_a.post(outbound, body, format="json").status_code == 429
        assert api_a.get(outbound).status_code == 200


@pytest.mark.usefixtures("three_per_minute")
def test_the_health_check_is_never_throttled(client, db):
    statuses = {client.get("/api/v1/health").status_code for _ in range(6)}
    assert 429 not in statuses


@pytest.mark.e2e
def test_the_rates_are_set_from_the_environment():
    env = {**os.environ, "API_RATE_LIMIT": "7/second", "API_SEND_RATE_LIMIT": "5/hour"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from django.conf import settings as s; "
            "print(s.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'])",
        ],
        env={**env, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        capture_output=True,
        text=True,
        check=True,
        cwd=settings.BASE_DIR,
    ).stdout
    assert out.strip() == "{'api': '7/second', 'send': '5/hour'}"


@pytest.mark.e2e
def test_a_malformed_rate_fails_at_start_with_a_clear_message():
    env = {**os.environ, "API_RATE_LIMIT": "lots", "DJANGO_SETTINGS_MODULE": "tests.settings"}
    result = subprocess.run(
        [sys.executable, "-c", "from django.conf import settings as s; s.REST_FRAMEWORK"],
        env=env,
        capture_output=True,
        text=True,
        cwd=settings.BASE_DIR,
    )
    assert result.returncode != 0
    assert "API_RATE_LIMIT='lots' is not a rate" in result.stderr


@pytest.mark.redis
@pytest.mark.skipif(not settings.REDIS_URL, reason="runs in the PostgreSQL + Redis pass")
@pytest.mark.usefixtures("three_per_minute")
def test_with_redis_the_counters_are_shared_by_every_web_process(api_a, keys, tenants):
    from django.core.cache import caches

    for _ in range(2):
        api_a.get(SESSIONS)
    key = CompanyAPIKey.objects.get(name="a main")
    another_process = caches.create_connection("api_throttle")  # its own connection pool
    cache_key = f"throttle:{settings.API_THROTTLE_NAMESPACE}:api:key:{key.pk}"
    assert len(another_process.get(cache_key)) == 2


@pytest.mark.usefixtures("three_per_minute")
def test_an_unreachable_counter_store_does_not_break_the_api(api_a, tenants, caplog):
    dead = {
        **settings.CACHES,
        "api_throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"socket_connect_timeout": 1},
        },
    }
    with override_settings(CACHES=dead):
        statuses = [api_a.get(SESSIONS).status_code for _ in range(5)]
    assert statuses == [200] * 5
    assert "throttle store unavailable" in caplog.text
