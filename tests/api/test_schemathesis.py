"""Property-based tests of every endpoint against the app's own OpenAPI schema
(schemathesis, through the WSGI app): no server error, responses as documented.

The schema is fetched from /api/v1/schema/ itself. Requests carry company A's
real API key; the generated company id is replaced by A's for most cases so
the handlers run on real data (A's session, messages, events), not only the
404 path.
"""

import json

import pytest
import schemathesis
from django.conf import settings as django_settings
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from aiadmin.api.converters import ID_MAX


@pytest.fixture
def api_schema(tenants, keys, data, settings):
    settings.REST_FRAMEWORK = {
        **django_settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api": "100000/min", "send": "100000/min"},
    }
    # Its auth checks send many bad and missing keys from one address: rate limits
    # are tested elsewhere (test_throttling, test_auth_failure_throttling).
    settings.API_AUTH_FAILURE_RATES = {"address": "100000/min", "key": "100000/min"}
    response = Client().get("/api/v1/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = schemathesis.openapi.from_dict(json.loads(response.content))
    schema.app = get_wsgi_application()
    # Like Django's test client: keep the test's database connection (and its
    # transaction) open across requests instead of closing it after each one.
    for signal in (request_started, request_finished):
        signal.disconnect(close_old_connections)
    yield schema
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)


schema = schemathesis.pytest.from_fixture("api_schema")
pytestmark = pytest.mark.django_db(databases="__all__")  # the health check uses the channel layer


SETTINGS = hypothesis_settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)


def aim_at_company_a(case, tenants, data):
    """Most valid ids become company A's and its messages' (real data); ids of
    negative cases (out of range, not numbers) stay as generated, to be rejected."""
    if case.meta is not None and case.meta.is_negative_at(ParameterLocation.PATH):
        return
    params = case.path_parameters or {}
    company_id = params.get("company_id")
    if not (isinstance(company_id, int) and 0 <= company_id <= ID_MAX and company_id % 4):
        return
    params["company_id"] = tenants.a.pk
    if isinstance(params.get("message_id"), int) and 0 <= params["message_id"] <= ID_MAX:
        kind = "outbound" if "/outbound/" in case.path else "inbound"
        params["message_id"] = data["alpha"][kind].pk


# Schema-valid requests may still break business rules the schema cannot express
# (a possible phone number, a paired session, a reused idempotency key): a clear
# 4xx is right there, so "positive data must be accepted" does not apply.
EXCLUDED = [positive_data_acceptance]


@schema.parametrize()
@SETTINGS
def test_no_endpoint_fails_with_a_server_error_for_a_company_key(case, tenants, keys, data):
    aim_at_company_a(case, tenants, data)
    case.call_and_validate(
        headers={"Authorization": f"Api-Key {keys['a']}"}, excluded_checks=EXCLUDED
    )


@schema.parametrize()
@SETTINGS
def test_no_endpoint_fails_with_a_server_error_for_a_superuser_session(case, tenants, data):
    client = Client()
    client.force_login(tenants.superuser)
    csrf = "c" * 32  # a CSRF secret sent as cookie and header, as a browser would
    aim_at_company_a(case, tenants, data)
    case.call_and_validate(
        headers={"X-CSRFToken": csrf},
        cookies={"sessionid": client.cookies["sessionid"].value, "csrftoken": csrf},
        # The session cookie is passed in by hand, so schemathesis cannot take it away to
        # test missing credentials; the key test above covers that.
        excluded_checks=EXCLUDED + [ignored_auth],
    )
