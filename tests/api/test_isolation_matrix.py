"""Every endpoint x every kind of caller: the status code, that nothing of
company A leaks to anyone else, and that a refused write changed nothing.

All requests target company A (the owner key's company). Another company's
caller gets 404 -- the same answer as for a company that does not exist --
never a 403 that would confirm A exists.
"""

from dataclasses import dataclass, field

import pytest
from django.forms.models import model_to_dict

from assistant.models import AssistantConfig
from companies.models import Company
from whatsapp.models import (
    Chat,
    ConnectionEvent,
    Contact,
    OutboundMessage,
    Turn,
    WhatsAppSession,
)

from .conftest import leaks

S = "/api/v1/whatsapp/sessions/{a}/"
pytestmark = pytest.mark.django_db(databases="__all__")  # health uses the channel layer


@dataclass
class Endpoint:
    name: str
    method: str
    path: str
    ok: int  # for A's key, A's owner and the superuser
    body: dict | None = None
    member: int | None = None  # for A's plain member (default: same as ok)
    is_list: bool = False  # no company in the path: others get 200 without A's data
    superuser: int | None = None
    owner: int | None = None  # A's owner via session (default: same as ok)
    setup: dict = field(default_factory=dict)  # fields to set on A's session first
    public: bool = False  # no authentication: the same answer for every caller


ENDPOINTS = [
    Endpoint("health", "get", "/api/v1/health", 200, public=True),
    Endpoint("companies list", "get", "/api/v1/companies/", 200, is_list=True),
    Endpoint("company detail", "get", "/api/v1/companies/{a}/", 200),
    Endpoint(
        "company create",
        "post",
        "/api/v1/companies/",
        403,
        is_list=True,
        body={"name": "New Co", "slug": "new-co"},
        superuser=201,
    ),
    Endpoint(
        "company update",
        "patch",
        "/api/v1/companies/{a}/",
        403,
        body={"contact_name": "Changed"},
        superuser=200,
    ),
    Endpoint("sessions list", "get", "/api/v1/whatsapp/sessions/", 200, is_list=True),
    Endpoint("session detail", "get", S, 200),
    Endpoint("session status (seed path)", "get", S + "status", 200),
    Endpoint("start", "post", S + "start", 202, member=403),
    Endpoint("stop", "post", S + "stop", 202, member=403),
    Endpoint("restart", "post", S + "restart", 202, member=403),
    Endpoint(
        "logout",
        "post",
        S + "logout",
        202,
        member=403,
        setup={"jid": "4917099999999@s.whatsapp.net", "qr_code": ""},
    ),
    Endpoint("QR code data", "get", S + "qr", 200),
    Endpoint("QR code SVG", "get", S + "qr.svg", 200),
    Endpoint("QR code PNG", "get", S + "qr.png", 200),
    Endpoint(
        "pairing code",
        "post",
        S + "pairing-code",
        202,
        member=403,
        body={"phone": "+49 170 7654321"},
    ),
    Endpoint("connection events", "get", S + "events", 200),
    Endpoint("outbound list", "get", S + "outbound/", 200),
    Endpoint(
        "send text",
        "post",
        S + "outbound/",
        202,
        body={"to": "+49 170 7654321", "text": "hello from the matrix"},
    ),
    Endpoint("outbound status", "get", S + "outbound/{out}/", 200),
    Endpoint("outbound media", "get", S + "outbound/{out}/media/", 200),
    Endpoint("inbound media", "get", S + "inbound/{in}/media/", 200),
    Endpoint("media download", "get", S + "media/{media}/download", 200),
    Endpoint("inbound list", "get", S + "inbound/", 200),
    Endpoint("inbound detail", "get", S + "inbound/{in}/", 200),
    Endpoint("processing status", "get", S + "inbound/{in}/processing", 200),
    # The matrix's job has not failed: a manager is told so (409), a member may not retry.
    Endpoint("processing retry", "post", S + "inbound/{in}/processing/retry", 409, member=403),
    Endpoint("assistant", "get", "/api/v1/assistant/{a}/", 200),
    Endpoint("assistant usage", "get", "/api/v1/assistant/{a}/usage", 200),
    Endpoint(
        "assistant change",
        "patch",
        "/api/v1/assistant/{a}/",
        200,
        member=403,
        body={"model": "changed-model", "api_key": "sk-changed"},
    ),
    Endpoint("chats list", "get", S + "chats/", 200),
    Endpoint("chat detail", "get", S + "chats/{chat}/", 200),
    Endpoint("chat thread", "get", S + "chats/{chat}/messages/", 200),
    Endpoint(
        "chat send as operator",
        "post",
        S + "chats/{chat}/messages/",
        202,
        body={"text": "hello from the matrix"},
    ),
    Endpoint("chat pause", "post", S + "chats/{chat}/pause", 200, body={"minutes": 10}),
    Endpoint("chat resume", "post", S + "chats/{chat}/resume", 200),
    Endpoint("contacts list", "get", S + "contacts/", 200),
    Endpoint("contacts search", "get", S + "contacts/?search=alpha", 200),
    Endpoint("contact detail", "get", S + "contacts/{contact}/", 200),
    Endpoint("contact forget", "delete", S + "contacts/{contact}/", 200, member=403),
    # A's callers with a wrong turn token: 403; everyone else: 404 (the turn is not theirs).
    Endpoint(
        "turn reply", "post", S + "turns/{turn}/reply", 403, body={"token": "x", "replies": ["hi"]}
    ),
]

CALLERS = [
    "owner_key",
    "other_key",
    "no_key",
    "revoked_key",
    "expired_key",
    "owner",
    "member",
    "other_owner",
    "outsider",
    "superuser",
]
UNAUTHENTICATED = {"no_key", "revoked_key", "expired_key"}
OTHER_TENANT = {"other_key", "other_owner", "outsider"}


def expected_status(endpoint, caller):
    if endpoint.public:
        return endpoint.ok
    if caller in UNAUTHENTICATED:
        return 401
    if caller in OTHER_TENANT:
        if endpoint.is_list:
            return 403 if endpoint.method == "post" else 200
        return 404
    if caller == "member":
        return endpoint.member or endpoint.ok
    if caller == "superuser":
        return endpoint.superuser or endpoint.ok
    if caller == "owner":
        return endpoint.owner or endpoint.ok
    return endpoint.ok


def snapshot(company):
    session = WhatsAppSession.objects.filter(company=company).first()
    return {
        "company": model_to_dict(Company.objects.get(pk=company.pk)),
        "companies": Company.objects.count(),
        "session": model_to_dict(session) if session else None,
        "events": ConnectionEvent.objects.filter(session__company=company).count(),
        "outbound": OutboundMessage.objects.filter(company=company).count(),
        "assistant": list(AssistantConfig.objects.filter(company=company).values()),
        "contacts": list(Contact.objects.filter(company=company).values()),
        "chats": list(Chat.objects.filter(company=company).values()),
        "turns": list(Turn.objects.filter(company=company).values_list("status", flat=True)),
    }


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: e.name)
def test_every_endpoint_answers_each_caller_without_leaking(
    endpoint, caller, callers, data, tenants
):
    if endpoint.setup:
        WhatsAppSession.objects.filter(company=tenants.a).update(**endpoint.setup)
    path = endpoint.path.format(
        a=tenants.a.pk,
        out=data["alpha"]["outbound"].pk,
        media=data["alpha"]["media"].pk,
        chat=data["alpha"]["chat"].pk,
        contact=data["alpha"]["contact"].pk,
        turn=data["alpha"]["turn"].pk,
        **{"in": data["alpha"]["inbound"].pk},
    )
    before = snapshot(tenants.a)

    client = callers[caller]
    response = getattr(client, endpoint.method)(path, endpoint.body, format="json")

    assert response.status_code == expected_status(endpoint, caller), response.content
    if caller in UNAUTHENTICATED | OTHER_TENANT:
        assert leaks(response) == [], f"{caller} saw company A's data at {path}"
    if response.status_code >= 400:
        assert response.json()["error"]["status"] == response.status_code
        assert snapshot(tenants.a) == before, f"a refused {endpoint.method} changed data"


def test_the_matrix_covers_every_api_route():
    """A new endpoint must be added to the matrix (routes from the URL conf)."""
    from assistant.api.urls import urlpatterns as assistant_routes
    from companies.api.urls import urlpatterns as company_routes
    from whatsapp.api.urls import urlpatterns as whatsapp_routes

    routes = {str(p.pattern) for p in whatsapp_routes + company_routes + assistant_routes}
    covered = {e.path.replace("/api/v1/", "", 1) for e in ENDPOINTS if not e.public}
    normalised = {
        r.replace("<id:company_id>", "{a}")
        .replace("<id:message_id>", "{in}")
        .replace("<id:media_id>", "{media}")
        .replace("<id:chat_id>", "{chat}")
        .replace("<id:contact_id>", "{contact}")
        .replace("<id:turn_id>", "{turn}")
        for r in routes
    }
    covered = {c.replace("{out}", "{in}") for c in covered}
    assert normalised <= covered, normalised - covered


@pytest.mark.parametrize(
    "kind",
    [
        "outbound/{out}/",
        "inbound/{in}/",
        "inbound/{in}/processing",
        "inbound/{in}/media/",
        "media/{media}/download",
        "chats/{chat}/",
        "chats/{chat}/messages/",
        "contacts/{contact}/",
    ],
)
def test_a_key_cannot_reach_another_company_s_message_through_its_own_company(
    kind, callers, data, tenants
):
    """B's key on B's own path, with the id of one of A's messages, chats or contacts: 404."""
    path = ("/api/v1/whatsapp/sessions/{b}/" + kind).format(
        b=tenants.b.pk,
        out=data["alpha"]["outbound"].pk,
        media=data["alpha"]["media"].pk,
        chat=data["alpha"]["chat"].pk,
        contact=data["alpha"]["contact"].pk,
        **{"in": data["alpha"]["inbound"].pk},
    )
    response = callers["other_key"].get(path)
    assert response.status_code == 404
    assert leaks(response) == []


def test_lists_show_each_caller_only_their_companies(callers, data, tenants):
    def company_ids(caller, path):
        response = callers[caller].get(path)
        assert response.status_code == 200
        return {row.get("company_id", row.get("id")) for row in response.json()["results"]}

    for path in ("/api/v1/companies/", "/api/v1/whatsapp/sessions/"):
        assert company_ids("owner_key", path) == {tenants.a.pk}
        assert company_ids("other_key", path) == {tenants.b.pk}
        assert company_ids("member", path) == {tenants.a.pk}
        assert company_ids("outsider", path) == set()
        assert company_ids("superuser", path) == {tenants.a.pk, tenants.b.pk}
