"""The health dashboard: every visible company worst first, totals, and the
sessions that need a person: flapping, replaced, logged out, down too long."""

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from companies.models import Company
from whatsapp.models import ConnectionEvent, DesiredState, SessionState
from whatsapp.services import control

from .conftest import add_events, login, set_session

URL = reverse("whatsapp_health")
Kind = ConnectionEvent.Kind
RUNNING = DesiredState.RUNNING


def names(sessions):
    return [s.company.name for s in sessions]


def test_it_is_the_admin_page_at_admin_whatsapp_health(tenants, sessions):
    assert URL == "/admin/whatsapp/health/"


def test_it_lists_every_company_worst_first(client, tenants, sessions):
    a, b = sessions
    c = control.ensure_session(Company.objects.create(name="Cafe Gamma", slug="gamma").pk)
    d = control.ensure_session(Company.objects.create(name="Deli Delta", slug="delta").pk)
    now = timezone.now()
    set_session(a, desired_state=RUNNING, state=SessionState.CONNECTED, last_event_at=now)
    set_session(
        b,
        desired_state=RUNNING,
        state=SessionState.FAILED,
        disconnected_since=now - timedelta(minutes=3),
    )
    set_session(c, desired_state=RUNNING, state=SessionState.RECONNECTING)
    set_session(d, desired_state=DesiredState.STOPPED, state=SessionState.STOPPED)
    response = login(client, tenants.superuser).get(URL)
    assert response.status_code == 200
    report = response.context["report"]
    assert names(report.sessions) == ["Barber Beta", "Cafe Gamma", "Salon Alpha", "Deli Delta"]
    assert report.totals["by_health"] == {"error": 1, "warning": 1, "ok": 1, "idle": 1}
    html = response.content.decode()
    assert html.index("Barber Beta") < html.index("Cafe Gamma") < html.index("Deli Delta")


def test_a_connected_session_without_events_ranks_as_a_warning(client, tenants, sessions):
    a, b = sessions
    now = timezone.now()
    set_session(
        a,
        desired_state=RUNNING,
        state=SessionState.CONNECTED,
        last_event_at=now - timedelta(hours=2),
    )
    set_session(b, desired_state=RUNNING, state=SessionState.CONNECTED, last_event_at=now)
    report = login(client, tenants.superuser).get(URL).context["report"]
    assert names(report.sessions) == ["Salon Alpha", "Barber Beta"]
    assert "connected but no events" in report.sessions[0].problems()


def test_it_adds_up_totals(client, tenants, sessions):
    a, b = sessions
    set_session(a, messages_in=10, messages_out=4, duplicates_blocked=2, conflict_count=1)
    set_session(b, messages_in=5, messages_out=1, duplicates_blocked=3, connect_failure_count=6)
    add_events(a, Kind.RECONNECTED, count=2, minutes_ago=10)
    add_events(b, Kind.RECONNECTED, count=3, minutes_ago=3 * 60)
    t = login(client, tenants.superuser).get(URL).context["report"].totals
    assert (t["messages_in"], t["messages_out"], t["duplicates_blocked"]) == (15, 5, 5)
    assert (t["conflicts"], t["connect_failures"]) == (1, 6)
    assert (t["reconnects_1h"], t["reconnects_24h"]) == (2, 5)


def test_it_names_flapping_sessions_by_the_configured_window(client, tenants, sessions, settings):
    settings.WHATSAPP = {**settings.WHATSAPP, "FLAP_RECONNECTS": 3, "FLAP_WINDOW_MINUTES": 10}
    a, b = sessions
    set_session(a, desired_state=RUNNING, state=SessionState.CONNECTED)
    set_session(b, desired_state=RUNNING, state=SessionState.CONNECTED)
    add_events(a, Kind.RECONNECTED, count=3, minutes_ago=5)
    add_events(b, Kind.RECONNECTED, count=2, minutes_ago=5)
    add_events(b, Kind.RECONNECTED, count=5, minutes_ago=15)  # outside the window
    response = login(client, tenants.superuser).get(URL)
    assert names(response.context["report"].flapping) == ["Salon Alpha"]
    assert "Flapping (3+ reconnections in 10 min)" in response.content.decode()


def test_it_lists_replaced_logged_out_and_long_down_sessions(client, tenants, sessions, settings):
    settings.WHATSAPP = {**settings.WHATSAPP, "DOWN_THRESHOLD_MINUTES": 10}
    a, b = sessions
    c = control.ensure_session(Company.objects.create(name="Cafe Gamma", slug="gamma").pk)
    now = timezone.now()
    set_session(
        a,
        desired_state=RUNNING,
        state=SessionState.REPLACED,
        disconnected_since=now - timedelta(minutes=2),
    )
    set_session(
        b,
        desired_state=RUNNING,
        state=SessionState.LOGGED_OUT,
        disconnected_since=now - timedelta(minutes=45),
    )
    set_session(
        c,
        desired_state=RUNNING,
        state=SessionState.FAILED,
        disconnected_since=now - timedelta(minutes=5),
    )
    report = login(client, tenants.superuser).get(URL).context["report"]
    assert names(report.replaced) == ["Salon Alpha"]
    assert names(report.logged_out) == ["Barber Beta"]
    assert names(report.down_too_long) == ["Barber Beta"]


def test_it_names_companies_that_never_started_a_session(client, tenants, sessions):
    Company.objects.create(name="Zoo Zeta", slug="zeta")
    response = login(client, tenants.superuser).get(URL)
    assert names_of_companies(response) == ["Zoo Zeta"]
    assert "Zoo Zeta" in response.content.decode()


def names_of_companies(response):
    return [c.name for c in response.context["report"].without_session]


def test_it_validates_ownership(client, tenants, sessions):
    a, b = sessions
    set_session(b, desired_state=RUNNING, state=SessionState.REPLACED)
    Company.objects.create(name="Zoo Zeta", slug="zeta")
    response = login(client, tenants.owner).get(URL)
    assert names(response.context["report"].sessions) == ["Salon Alpha"]
    assert response.context["report"].replaced == []
    assert names_of_companies(response) == []
    html = response.content.decode()
    assert "Barber Beta" not in html and "Zoo Zeta" not in html
    response = login(client, tenants.other_owner).get(URL)
    assert names(response.context["report"].sessions) == ["Barber Beta"]
    assert login(client, tenants.outsider).get(URL).status_code == 403
    client.logout()
    assert client.get(URL).status_code == 302


def test_it_reads_every_company_without_a_query_per_row(client, tenants, sessions):
    login(client, tenants.superuser)
    with CaptureQueriesContext(connection) as few:
        client.get(URL)
    for i in range(8):
        session = control.ensure_session(Company.objects.create(name=f"X{i}", slug=f"x{i}").pk)
        set_session(session, desired_state=RUNNING, state=SessionState.FAILED)
        add_events(session, Kind.RECONNECTED, count=2, minutes_ago=5)
    with CaptureQueriesContext(connection) as many:
        response = client.get(URL)
    assert len(response.context["report"].sessions) == 10
    assert len(many.captured_queries) == len(few.captured_queries)
