"""Session endpoints: status and health, control with no worker running, the
channel hint to the owning worker, QR code (data, SVG, PNG), pairing code,
and the connection-event history with reconnection counts."""

import asyncio
import struct
import xml.etree.ElementTree as ET

import pytest
import segno
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.utils import timezone

from whatsapp.models import (
    ConnectionEvent,
    DesiredState,
    SessionLease,
    SessionState,
    WhatsAppSession,
    WorkerProcess,
)

HEALTH_FIELDS = {
    "state",
    "desired_state",
    "health",
    "is_paired",
    "connected_since",
    "last_event_at",
    "last_error",
    "reconnect_count",
    "conflict_count",
    "connect_failure_count",
    "messages_in",
    "messages_out",
    "duplicates_blocked",
}


def url(company, suffix=""):
    return f"/api/v1/whatsapp/sessions/{company.pk}/{suffix}"


def test_the_list_carries_the_health_fields_of_each_session(api_a, data, tenants):
    WhatsAppSession.objects.filter(company=tenants.a).update(
        state=SessionState.CONNECTED, reconnect_count=3, last_event_at=timezone.now()
    )
    rows = api_a.get("/api/v1/whatsapp/sessions/").json()["results"]
    assert len(rows) == 1
    assert HEALTH_FIELDS <= set(rows[0])
    assert rows[0]["health"] == "ok"
    assert rows[0]["reconnect_count"] == 3


def test_the_status_of_a_company_that_never_ran_is_stopped_and_creates_nothing(api_a, tenants):
    response = api_a.get(url(tenants.a, "status"))
    assert response.status_code == 200
    assert response.json()["state"] == "stopped"
    assert response.json()["health"] == "idle"
    assert not WhatsAppSession.objects.filter(company=tenants.a).exists()


def test_the_seed_status_path_answers_like_the_detail(api_a, data, tenants):
    assert api_a.get(url(tenants.a, "status")).json() == api_a.get(url(tenants.a)).json()


def test_start_succeeds_with_no_worker_running_and_stores_the_wish(api_a, tenants):
    assert not WorkerProcess.objects.exists()
    response = api_a.post(url(tenants.a, "start"))
    assert response.status_code == 202
    assert response.json()["desired_state"] == "running"
    session = WhatsAppSession.objects.get(company=tenants.a)
    assert session.desired_state == DesiredState.RUNNING
    assert session.events.filter(kind=ConnectionEvent.Kind.STARTING).count() == 1


def test_stop_and_restart_are_written_to_the_row(api_a, data, tenants):
    assert api_a.post(url(tenants.a, "stop")).json()["desired_state"] == "stopped"
    response = api_a.post(url(tenants.a, "restart"))
    assert response.status_code == 202
    assert response.json()["desired_state"] == "running"
    assert response.json()["restart_requested_at"] is not None


def test_starting_an_inactive_company_is_a_clear_conflict(api_a, tenants):
    tenants.a.is_active = False
    tenants.a.save()
    response = api_a.post(url(tenants.a, "start"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "session_command_rejected"
    assert "inactive" in response.json()["error"]["message"]


def test_logging_out_an_unpaired_session_is_a_conflict(api_a, data, tenants):
    response = api_a.post(url(tenants.a, "logout"))
    assert response.status_code == 409
    assert "not paired" in response.json()["error"]["message"]


def test_logging_out_a_paired_session_asks_the_worker_to_do_it(api_a, data, tenants):
    WhatsAppSession.objects.filter(company=tenants.a).update(jid="4917099999999@s.whatsapp.net")
    response = api_a.post(url(tenants.a, "logout"))
    assert response.status_code == 202
    assert response.json()["logout_requested_at"] is not None


def test_a_plain_member_may_read_but_not_control_the_session(callers, data, tenants):
    member = callers["member"]
    assert member.get(url(tenants.a)).status_code == 200
    response = member.post(url(tenants.a, "stop"))
    assert response.status_code == 403
    assert "owner or admin" in response.json()["error"]["message"]
    assert WhatsAppSession.objects.get(company=tenants.a).desired_state == DesiredState.RUNNING


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_command_hints_the_worker_that_holds_the_lease(tenants, keys):
    from .conftest import key_client

    channel = "whatsapp.worker.api-test"
    WorkerProcess.objects.create(worker_id="w-api", channel_name=channel)
    session = WhatsAppSession.objects.create(company=tenants.a)
    SessionLease.objects.create(
        session=session,
        owner="w-api",
        epoch=1,
        expires_at=timezone.now() + timezone.timedelta(seconds=60),
    )
    response = key_client(keys["a"]).post(url(tenants.a, "restart"))
    assert response.status_code == 202

    async def receive():
        return await asyncio.wait_for(get_channel_layer().receive(channel), 10)

    message = async_to_sync(receive)()
    assert message == {"type": "session.restart", "company_id": tenants.a.pk}


def test_the_qr_code_comes_as_raw_data(api_a, data, tenants):
    body = api_a.get(url(tenants.a, "qr")).json()
    assert body["qr_code"] == data["alpha"]["session"].qr_code
    assert body["state"] == "awaiting_pairing"


def test_the_qr_code_comes_as_an_svg_image_of_that_payload(api_a, data, tenants):
    response = api_a.get(url(tenants.a, "qr.svg"))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert response["Cache-Control"] == "no-store"
    root = ET.fromstring(response.content)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    size = segno.make(data["alpha"]["session"].qr_code, micro=False).symbol_size(scale=4)
    assert (int(root.get("width")), int(root.get("height"))) == size


def test_the_qr_code_comes_as_a_png_image_of_that_payload(api_a, data, tenants):
    response = api_a.get(url(tenants.a, "qr.png"))
    assert response.status_code == 200
    assert response["Content-Type"] == "image/png"
    assert response.content[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", response.content[16:24])  # the IHDR chunk
    size = segno.make(data["alpha"]["session"].qr_code, micro=False).symbol_size(scale=8)
    assert (width, height) == size


@pytest.mark.parametrize("suffix", ["qr", "qr.svg", "qr.png"])
def test_no_qr_code_is_a_404_that_says_why(suffix, api_a, data, tenants):
    WhatsAppSession.objects.filter(company=tenants.a).update(
        qr_code="", state=SessionState.CONNECTED, jid="4917099999999@s.whatsapp.net"
    )
    response = api_a.get(url(tenants.a, suffix), HTTP_ACCEPT="image/png")
    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "no_qr_code"
    assert "paired" in response.json()["error"]["message"]


def test_a_pairing_code_request_stores_the_phone_in_e164(api_a, data, tenants):
    response = api_a.post(
        url(tenants.a, "pairing-code"), {"phone": "0049 170 7654321"}, format="json"
    )
    assert response.status_code == 202
    assert response.json()["pairing_phone"] == "+491707654321"
    assert WhatsAppSession.objects.get(company=tenants.a).pairing_requested_at is not None


@pytest.mark.parametrize("body", [{"phone": "12"}, {"phone": "not a number"}, {}])
def test_a_pairing_code_request_rejects_a_bad_phone_with_a_field_error(body, api_a, data, tenants):
    response = api_a.post(url(tenants.a, "pairing-code"), body, format="json")
    assert response.status_code == 400
    assert "phone" in response.json()["error"]["fields"]
    assert WhatsAppSession.objects.get(company=tenants.a).pairing_phone == ""


def test_a_pairing_code_for_a_paired_session_is_a_conflict(api_a, data, tenants):
    WhatsAppSession.objects.filter(company=tenants.a).update(jid="4917099999999@s.whatsapp.net")
    response = api_a.post(url(tenants.a, "pairing-code"), {"phone": "+491707654321"}, format="json")
    assert response.status_code == 409
    assert "already paired" in response.json()["error"]["message"]


def test_the_event_history_pages_newest_first_with_reconnection_counts(api_a, data, tenants):
    session = data["alpha"]["session"]
    for kind in ["connected", "disconnected", "reconnected", "disconnected", "reconnected"]:
        ConnectionEvent.objects.create(session=session, kind=kind, reason=kind)
    WhatsAppSession.objects.filter(pk=session.pk).update(reconnect_count=2, conflict_count=1)

    seen, next_url = [], url(tenants.a, "events?page_size=2")
    while next_url:
        body = api_a.get(next_url).json()
        assert body["counts"]["reconnect_count"] == 2
        assert body["counts"]["conflict_count"] == 1
        assert body["counts"]["events_by_kind"] == {
            "qr": 1,
            "connected": 1,
            "disconnected": 2,
            "reconnected": 2,
        }
        seen += [row["id"] for row in body["results"]]
        next_url = body["next"]
    assert seen == sorted(seen, reverse=True)
    assert len(seen) == len(set(seen)) == 6


def test_the_event_history_of_a_company_that_never_ran_is_empty(api_a, tenants):
    body = api_a.get(url(tenants.a, "events")).json()
    assert body["results"] == []
    assert body["counts"]["reconnect_count"] == 0


def test_the_session_list_costs_the_same_queries_for_many_companies(
    callers, data, tenants, django_assert_max_num_queries
):
    from companies.models import Company

    client = callers["superuser"]
    with django_assert_max_num_queries(10) as few:
        client.get("/api/v1/whatsapp/sessions/")
    for i in range(20):
        company = Company.objects.create(name=f"Extra {i}", slug=f"extra-{i}")
        if i % 2:
            WhatsAppSession.objects.create(company=company)
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(client.get("/api/v1/whatsapp/sessions/").json()["results"]) == 22
