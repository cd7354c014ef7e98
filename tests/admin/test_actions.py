"""Session actions from the admin: start, stop, restart, log out, request a
pairing code, and the bulk actions. Each calls the control service the API
uses; only the company's owners/admins (and superusers) may act, and a
refused or invalid request changes nothing."""

import pytest
from django.urls import reverse

from companies.models import Company, Membership
from whatsapp.models import ConnectionEvent, DesiredState, WhatsAppSession

from .conftest import login, set_session


def action(session, name):
    return reverse("admin:whatsapp_session_action", args=[session.pk, name])


def pair(session):
    return reverse("admin:whatsapp_session_pair", args=[session.pk])


def fresh(session):
    return WhatsAppSession.objects.get(pk=session.pk)


def snapshot(session):
    row = fresh(session)
    return (
        row.desired_state,
        row.restart_requested_at,
        row.logout_requested_at,
        row.pairing_phone,
        row.pairing_requested_at,
        session.events.count(),
    )


def messages_of(response):
    return [str(m) for m in response.context["messages"]] if response.context else []


def test_an_owner_restarts_their_session_through_the_control_service(client, tenants, sessions):
    a, _ = sessions
    response = login(client, tenants.owner).post(action(a, "restart"), follow=True)
    assert response.redirect_chain[-1][0] == reverse(
        "admin:whatsapp_whatsappsession_change", args=[a.pk]
    )
    row = fresh(a)
    assert row.desired_state == DesiredState.RUNNING and row.restart_requested_at is not None
    event = a.events.first()
    assert (event.kind, event.reason) == (
        ConnectionEvent.Kind.STARTING,
        "restart requested by owner (admin)",
    )
    assert "Restart requested for Salon Alpha." in messages_of(response)


def test_start_and_stop_set_the_desired_state(client, tenants, sessions):
    a, _ = sessions
    login(client, tenants.owner)
    client.post(action(a, "start"))
    assert fresh(a).desired_state == DesiredState.RUNNING
    client.post(action(a, "stop"))
    assert fresh(a).desired_state == DesiredState.STOPPED
    assert [e.reason for e in a.events.all()[:2]] == [
        "stop requested by owner (admin)",
        "start requested by owner (admin)",
    ]


def test_logout_of_an_unpaired_session_is_refused_with_the_reason(client, tenants, sessions):
    a, _ = sessions
    before = snapshot(a)
    response = login(client, tenants.owner).post(action(a, "logout"), follow=True)
    assert "Log out refused: the session is not paired; there is nothing to log out" in (
        messages_of(response)
    )
    assert snapshot(a) == before


def test_logout_of_a_paired_session_is_requested(client, tenants, sessions):
    a, _ = sessions
    set_session(a, jid="491701234567:3@s.whatsapp.net")
    login(client, tenants.owner).post(action(a, "logout"))
    assert fresh(a).logout_requested_at is not None


def test_starting_an_inactive_company_is_refused(client, tenants, sessions):
    a, _ = sessions
    tenants.a.is_active = False
    tenants.a.save()
    before = snapshot(a)
    response = login(client, tenants.owner).post(action(a, "start"), follow=True)
    assert "Start refused: the company is inactive; activate it first" in messages_of(response)
    assert snapshot(a) == before


def test_a_pairing_code_is_requested_for_a_valid_phone_number(client, tenants, sessions):
    a, _ = sessions
    response = login(client, tenants.owner).post(pair(a), {"phone": "+49 170 1234567"})
    assert response.status_code == 302
    row = fresh(a)
    assert row.pairing_phone == "+491701234567" and row.pairing_requested_at is not None
    assert row.desired_state == DesiredState.RUNNING


@pytest.mark.parametrize("phone", ["", "12", "not a number", "+1 23", "0170 1234567"])
def test_an_invalid_phone_number_is_refused_with_a_clear_error(client, tenants, sessions, phone):
    a, _ = sessions
    before = snapshot(a)
    response = login(client, tenants.owner).post(pair(a), {"phone": phone})
    assert response.status_code == 400
    errors = response.context["pairing_form"].errors["phone"]
    assert errors and all(e.strip() for e in errors)
    assert 'class="errorlist' in response.content.decode()
    assert snapshot(a) == before


def test_a_national_number_is_paired_like_the_api_does_with_a_default_country(
    client, tenants, sessions, settings
):
    settings.WHATSAPP = {**settings.WHATSAPP, "DEFAULT_COUNTRY": "DE"}
    a, _ = sessions
    response = login(client, tenants.owner).post(pair(a), {"phone": "0170 1234567"})
    assert response.status_code == 302
    assert fresh(a).pairing_phone == "+491701234567"


def test_a_paired_session_cannot_request_a_pairing_code(client, tenants, sessions):
    a, _ = sessions
    set_session(a, jid="491701234567:3@s.whatsapp.net")
    before = snapshot(a)
    response = login(client, tenants.owner).post(pair(a), {"phone": "+491701234567"})
    assert response.status_code == 400
    assert "already paired" in response.content.decode()
    assert snapshot(a) == before


def test_actions_must_be_posted_and_known(client, tenants, sessions):
    a, _ = sessions
    login(client, tenants.owner)
    before = snapshot(a)
    assert client.get(action(a, "restart")).status_code == 405
    assert client.get(pair(a)).status_code == 405
    assert client.post(action(a, "explode")).status_code == 404
    assert snapshot(a) == before


def test_bulk_actions_act_on_each_selected_session(client, tenants, sessions):
    a, b = sessions
    changelist = reverse("admin:whatsapp_whatsappsession_changelist")
    login(client, tenants.superuser).post(
        changelist, {"action": "restart_selected", "_selected_action": [a.pk, b.pk]}
    )
    assert {fresh(a).desired_state, fresh(b).desired_state} == {DesiredState.RUNNING}


def test_it_validates_ownership(client, tenants, sessions):
    a, b = sessions
    before_a, before_b = snapshot(a), snapshot(b)
    # Another company's owner: the session does not exist for them.
    login(client, tenants.other_owner)
    for name in ["start", "stop", "restart", "logout"]:
        assert client.post(action(a, name)).status_code == 404
    assert client.post(pair(a), {"phone": "+491701234567"}).status_code == 404
    # A plain member of the company sees it but may not control it.
    login(client, tenants.member)
    for name in ["start", "stop", "restart", "logout"]:
        assert client.post(action(a, name)).status_code == 403
    assert client.post(pair(a), {"phone": "+491701234567"}).status_code == 403
    # Staff without a company, and anonymous visitors.
    login(client, tenants.outsider)
    assert client.post(action(a, "restart")).status_code == 404
    client.logout()
    assert client.post(action(a, "restart")).status_code == 302
    # Bulk actions only ever reach the sessions the user may control.
    changelist = reverse("admin:whatsapp_whatsappsession_changelist")
    login(client, tenants.other_owner).post(
        changelist, {"action": "stop_selected", "_selected_action": [a.pk, b.pk]}
    )
    login(client, tenants.member).post(
        changelist, {"action": "restart_selected", "_selected_action": [a.pk]}
    )
    assert snapshot(a) == before_a
    assert fresh(b).desired_state == DesiredState.STOPPED
    assert b.events.first().reason == "stop requested by other (admin)"
    assert snapshot(b) != before_b


def test_a_company_without_a_session_is_started_from_the_dashboard(client, tenants, sessions):
    gamma = Company.objects.create(name="Cafe Gamma", slug="gamma")
    start = reverse("whatsapp_health_start", args=[gamma.pk])
    assert login(client, tenants.owner).post(start).status_code == 404  # not their company
    assert client.get(reverse("whatsapp_health_start", args=[tenants.a.pk])).status_code == 405
    assert not WhatsAppSession.objects.filter(company=gamma).exists()
    response = login(client, tenants.superuser).post(start)
    session = WhatsAppSession.objects.get(company=gamma)
    assert response.url == reverse("admin:whatsapp_whatsappsession_change", args=[session.pk])
    assert session.desired_state == DesiredState.RUNNING
    # A plain member may see a company but not start it.
    Membership.objects.create(company=gamma, user=tenants.member)
    WhatsAppSession.objects.filter(company=gamma).delete()
    assert login(client, tenants.member).post(start).status_code == 403
    assert not WhatsAppSession.objects.filter(company=gamma).exists()
