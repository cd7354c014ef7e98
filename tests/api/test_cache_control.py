"""Every answer under /api/v1/ -- data, errors, the schema -- says
`Cache-Control: no-store`: API responses carry tenant data and must not be kept
by browsers or shared caches."""

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from .conftest import key_client

pytestmark = pytest.mark.django_db(databases="__all__")  # health uses the channel layer


def no_store(response):
    return "no-store" in response.get("Cache-Control", "")


def test_successful_answers_are_not_stored(api_a, tenants):
    for path in [
        "/api/v1/companies/",
        f"/api/v1/companies/{tenants.a.pk}/",
        "/api/v1/whatsapp/sessions/",
        f"/api/v1/whatsapp/sessions/{tenants.a.pk}/outbound/",
        "/api/v1/health",
        "/api/v1/schema/",
    ]:
        response = api_a.get(path)
        assert response.status_code in (200, 503), (path, response.status_code)
        assert no_store(response), path
    sent = api_a.post(
        f"/api/v1/whatsapp/sessions/{tenants.a.pk}/outbound/",
        {"to": "+491707654321", "text": "hi"},
        format="json",
    )
    assert sent.status_code == 202 and no_store(sent)


def test_errors_are_not_stored(api_a, tenants):
    answers = {
        401: APIClient().get("/api/v1/companies/"),
        "401 bad key": key_client("nope.nope").get("/api/v1/companies/"),
        404: api_a.get("/api/v1/companies/999999/"),
        "404 no endpoint": api_a.get("/api/v1/no/such/thing"),
        400: api_a.get("/api/v1/companies/", {"page_size": "0"}),
        405: api_a.delete("/api/v1/companies/"),
    }
    for name, response in answers.items():
        assert str(response.status_code) == str(name).split()[0], (name, response.status_code)
        assert no_store(response), name


def test_a_throttled_answer_is_not_stored(api_a, settings):
    with override_settings(
        REST_FRAMEWORK={
            **settings.REST_FRAMEWORK,
            "DEFAULT_THROTTLE_RATES": {"api": "1/min", "send": "1/min"},
        }
    ):
        api_a.get("/api/v1/companies/")
        response = api_a.get("/api/v1/companies/")
    assert response.status_code == 429 and no_store(response)
