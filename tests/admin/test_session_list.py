"""The session list: one row per company with its health, counted without a
query per row, filtered, searched and sorted; each user sees their companies."""

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from companies.models import Company
from whatsapp.models import ConnectionEvent, SessionLease, SessionState, WhatsAppSession
from whatsapp.services import control

from .conftest import add_events, login, set_session

URL = reverse("admin:whatsapp_whatsappsession_changelist")
Kind = ConnectionEvent.Kind


def rows(response):
    return {s.company.name: s for s in response.context["cl"].result_list}


def test_it_shows_one_row_per_company_with_a_coloured_state_badge(client, tenants, sessions):
    a, b = sessions
    set_session(a, state=SessionState.CONNECTED, connected_since=timezone.now())
    set_session(b, state=SessionState.REPLACED)
    response = login(client, tenants.superuser).get(URL)
    assert response.status_code == 200
    assert set(rows(response)) == {"Salon Alpha", "Barber Beta"}
    html = response.content.decode()
    assert '<span class="wa-badge wa-state-connected"' in html
    assert '<span class="wa-badge wa-state-replaced"' in html
    assert "Taken over by another device" in html


def test_it_counts_reconnections_in_the_last_hour_day_and_in_total(client, tenants, sessions):
    a, _ = sessions
    set_session(a, reconnect_count=9)
    add_events(a, Kind.RECONNECTED, count=2, minutes_ago=20)
    add_events(a, Kind.RECONNECTED, count=3, minutes_ago=5 * 60)
    add_events(a, Kind.RECONNECTED, count=4, minutes_ago=30 * 60)  # older than a day
    add_events(a, Kind.DISCONNECTED, count=6, minutes_ago=10)  # drops are not reconnections
    row = rows(login(client, tenants.superuser).get(URL))["Salon Alpha"]
    assert (row.reconnects_1h, row.reconnects_24h, row.reconnect_count) == (2, 5, 9)


def test_it_shows_the_last_error_and_messages_and_leaves_the_rest_to_the_session_page(
    client, tenants, sessions
):
    a, _ = sessions
    set_session(
        a,
        conflict_count=3,
        connect_failure_count=4,
        messages_in=120,
        messages_out=80,
        duplicates_blocked=7,
        last_error="stream replaced (440 conflict)",
        last_error_at=timezone.now() - timedelta(minutes=3),
    )
    SessionLease.objects.filter(session=a).update(
        owner="worker-7", epoch=2, expires_at=timezone.now() + timedelta(seconds=30)
    )
    html = login(client, tenants.superuser).get(URL).content.decode()
    for text in ["stream replaced (440 conflict)", "3\xa0minutes ago", ">120<", ">80<"]:
        assert text in html, text
    assert "worker-7" not in html  # on the session page
    html = client.get(f"/admin/whatsapp/whatsappsession/{a.pk}/change/").content.decode()
    for text in ["worker-7", ">3<", ">4<", ">7<"]:
        assert text in html, text
    assert "(expired)" not in html


def test_it_reads_every_row_without_a_query_per_row(client, tenants, sessions):
    login(client, tenants.superuser)
    with CaptureQueriesContext(connection) as two:
        client.get(URL)
    for i in range(10):
        company = Company.objects.create(name=f"Extra {i}", slug=f"extra-{i}")
        session = control.ensure_session(company.pk)
        add_events(session, Kind.RECONNECTED, count=2, minutes_ago=5)
    with CaptureQueriesContext(connection) as twelve:
        response = client.get(URL)
    assert len(rows(response)) == 12
    assert len(twelve.captured_queries) == len(two.captured_queries)


def test_it_filters_by_state_and_by_errors(client, tenants, sessions):
    a, b = sessions
    set_session(
        a,
        state=SessionState.FAILED,
        last_error="dial failed",
        last_error_at=timezone.now() - timedelta(hours=30),
    )
    set_session(b, state=SessionState.CONNECTED)
    login(client, tenants.superuser)
    assert set(rows(client.get(URL, {"state": "failed"}))) == {"Salon Alpha"}
    assert set(rows(client.get(URL, {"state": "connected"}))) == {"Barber Beta"}
    assert set(rows(client.get(URL, {"errors": "any"}))) == {"Salon Alpha"}
    assert set(rows(client.get(URL, {"errors": "24h"}))) == set()  # 30 h ago
    assert set(rows(client.get(URL, {"errors": "none"}))) == {"Barber Beta"}


def test_it_searches_by_company_name_and_phone(client, tenants, sessions):
    _, b = sessions
    set_session(b, phone="+4917012345678")
    login(client, tenants.superuser)
    assert set(rows(client.get(URL, {"q": "alpha"}))) == {"Salon Alpha"}
    assert set(rows(client.get(URL, {"q": "12345"}))) == {"Barber Beta"}


def test_it_sorts_by_a_counter_column(client, tenants, sessions):
    a, b = sessions
    add_events(a, Kind.RECONNECTED, count=1, minutes_ago=5)
    add_events(b, Kind.RECONNECTED, count=4, minutes_ago=5)
    set_session(a, messages_in=5)
    login(client, tenants.superuser)
    cl = client.get(URL).context["cl"]
    by_hour = str(cl.list_display.index("reconnects_last_hour"))
    by_messages = str(cl.list_display.index("messages"))
    names = [
        s.company.name for s in client.get(URL, {"o": f"-{by_hour}"}).context["cl"].result_list
    ]
    assert names == ["Barber Beta", "Salon Alpha"]
    names = [
        s.company.name for s in client.get(URL, {"o": f"-{by_messages}"}).context["cl"].result_list
    ]
    assert names == ["Salon Alpha", "Barber Beta"]


def test_it_lists_the_worst_sessions_first_by_default(client, tenants, sessions):
    a, b = sessions
    set_session(a, desired_state="running", state=SessionState.CONNECTED)
    set_session(b, desired_state="running", state=SessionState.LOGGED_OUT)
    names = [
        s.company.name for s in login(client, tenants.superuser).get(URL).context["cl"].result_list
    ]
    assert names == ["Barber Beta", "Salon Alpha"]


def test_it_validates_ownership(client, tenants, sessions):
    assert client.get(URL).status_code == 302  # anonymous: to the login page
    assert set(rows(login(client, tenants.owner).get(URL))) == {"Salon Alpha"}
    assert set(rows(login(client, tenants.member).get(URL))) == {"Salon Alpha"}
    assert set(rows(login(client, tenants.other_owner).get(URL))) == {"Barber Beta"}
    # A search or filter cannot reach another company's row either.
    assert set(rows(login(client, tenants.owner).get(URL, {"q": "Beta"}))) == set()
    assert login(client, tenants.outsider).get(URL).status_code == 403
    assert WhatsAppSession.objects.count() == 2
