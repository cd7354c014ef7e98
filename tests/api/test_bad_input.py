"""Crafted input is a 400 in the one error shape, never a 500, and stores nothing:
pagination cursors on every list endpoint, and JSON nested deeper than the limit."""

import base64
from urllib.parse import urlencode

import pytest
from django.urls import URLPattern, URLResolver, get_resolver
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from aiadmin.api.pagination import IdCursorPagination
from whatsapp.models import OutboundMessage

pytestmark = pytest.mark.django_db

# Hypothesis examples share one test's fixtures (a company, a key); every example
# is a read or a refused write, so sharing them is safe.
PROPERTY = hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(autouse=True)
def no_success_throttling(settings):
    """Many requests per test: the per-key rate limit is not what is tested here."""
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api": "100000/min", "send": "100000/min"},
    }


def paginated_routes():
    """Every API route whose view paginates, as a path for company `company_id`."""
    found = []

    def walk(patterns, prefix):
        for entry in patterns:
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + str(entry.pattern))
            elif isinstance(entry, URLPattern):
                view = getattr(entry.callback, "view_class", None)
                pagination = getattr(view, "pagination_class", None)
                if view and pagination and issubclass(pagination, IdCursorPagination):
                    found.append(prefix + str(entry.pattern))

    walk(get_resolver().url_patterns, "/")
    return found


LIST_ROUTES = paginated_routes()


def list_paths(company_id):
    return [route.replace("<id:company_id>", str(company_id)) for route in LIST_ROUTES]


def cursor(query):
    return base64.b64encode(query.encode()).decode()


def assert_cursor_error(response):
    assert response.status_code == 400, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert "cursor" in error["fields"]


def test_the_walk_finds_every_list_endpoint():
    for known in ["companies/", "sessions/", "/events", "/outbound/", "/inbound/"]:
        assert any(route.endswith(known) for route in LIST_ROUTES), (known, LIST_ROUTES)


@pytest.mark.parametrize(
    "query",
    ["p=abc", "p=1e5", "p=2020-01-01", "p=-1", "p=1.5", "p=" + "9" * 19, "p=%00", "o=1&p=x"],
)
def test_a_crafted_cursor_position_is_a_400_on_every_list_endpoint(query, api_a, tenants):
    for path in list_paths(tenants.a.pk):
        assert_cursor_error(api_a.get(path, {"cursor": cursor(query)}))


def test_a_real_cursor_still_works(api_a, tenants):
    for i in range(3):
        OutboundMessage.objects.create(
            company=tenants.a, to_jid="491511@s.whatsapp.net", text="x", idempotency_key=f"k{i}"
        )
    path = f"/api/v1/whatsapp/sessions/{tenants.a.pk}/outbound/"
    first = api_a.get(path, {"page_size": 2}).json()
    second = api_a.get(first["next"])
    assert second.status_code == 200
    assert len(first["results"]) + len(second.json()["results"]) == 3


cursor_queries = st.dictionaries(
    st.sampled_from(["p", "o", "r", "x"]), st.text(max_size=30), max_size=3
).map(urlencode)
raw_cursors = st.one_of(
    cursor_queries.map(cursor),
    st.text(max_size=60),
    st.binary(max_size=40).map(lambda raw: base64.b64encode(raw).decode()),
)


@PROPERTY
@given(raw=raw_cursors)
def test_no_cursor_whatsoever_makes_a_list_endpoint_fail(raw, api_a, tenants):
    for path in list_paths(tenants.a.pk):
        response = api_a.get(path, {"cursor": raw})
        assert response.status_code in (200, 400), (path, raw, response.content[:300])
        if response.status_code == 400:
            assert_cursor_error(response)


# --- JSON nesting -----------------------------------------------------------


def outbound(tenants):
    return f"/api/v1/whatsapp/sessions/{tenants.a.pk}/outbound/"


def post_raw(client, path, body):
    return client.generic("POST", path, body, content_type="application/json")


def assert_too_deep(response):
    assert response.status_code == 400, (response.status_code, response.content[:300])
    error = response.json()["error"]
    assert error["code"] == "parse_error"
    assert "nested" in error["message"]


def test_a_deeply_nested_body_under_the_size_limit_is_a_400(api_a, tenants):
    body = "[" * 60000 + "]" * 60000
    assert len(body) < 128 * 1024
    assert_too_deep(post_raw(api_a, outbound(tenants), body))
    assert not OutboundMessage.objects.exists()


def test_nesting_up_to_the_limit_is_parsed(api_a, tenants, settings):
    settings.API_MAX_JSON_DEPTH = 4
    body = '{"to": "+491707654321", "text": "hi", "x": [[{"y": 1}]]}'  # depth 4
    assert post_raw(api_a, outbound(tenants), body).status_code == 202
    assert_too_deep(post_raw(api_a, outbound(tenants), '{"x": [[[{}]]]}'))  # depth 5


def test_brackets_inside_strings_do_not_count_as_nesting(api_a, tenants, settings):
    settings.API_MAX_JSON_DEPTH = 2
    body = '{"to": "+491707654321", "text": "[[[{{{ \\" [[[ "}'
    response = post_raw(api_a, outbound(tenants), body)
    assert response.status_code == 202, response.content
    assert OutboundMessage.objects.get().text == '[[[{{{ " [[[ '


def nested(depth_and_kinds):
    text = "1"
    for kind in depth_and_kinds:
        text = f"[{text}]" if kind else '{"k": ' + text + "}"
    return text


@PROPERTY
@given(kinds=st.lists(st.booleans(), min_size=0, max_size=200))
def test_any_nesting_is_either_parsed_or_refused_as_too_deep(kinds, api_a, tenants, settings):
    settings.API_MAX_JSON_DEPTH = 32
    response = post_raw(api_a, outbound(tenants), nested(kinds))
    if len(kinds) > 32:
        assert_too_deep(response)
    else:  # parsed: the body is not a valid message (400 invalid), never a 500
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid"
    assert not OutboundMessage.objects.exists()
