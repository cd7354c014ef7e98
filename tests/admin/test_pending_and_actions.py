"""What the session page offers and says while a wish is not yet carried out:
the actions that fit the state, and a pending word until the worker confirms."""

import pytest
from django.utils import timezone

from whatsapp.models import DesiredState, SessionState

from .conftest import set_session

pytestmark = pytest.mark.django_db

JID = "491701234567:7@s.whatsapp.net"


def test_a_stopped_session_offers_only_start(sessions):
    a, _ = sessions
    assert a.available_actions() == ["start"]
    assert a.pending() == ""


def test_a_running_paired_session_offers_stop_restart_and_log_out_but_not_start(sessions):
    a, _ = sessions
    set_session(a, desired_state=DesiredState.RUNNING, state=SessionState.CONNECTED, jid=JID)
    assert a.available_actions() == ["stop", "restart", "logout"]


def test_a_logged_out_session_offers_start_again_and_no_log_out(sessions):
    a, _ = sessions
    set_session(a, desired_state=DesiredState.RUNNING, state=SessionState.LOGGED_OUT)
    assert a.available_actions() == ["start", "stop", "restart"]


def test_stop_is_pending_until_the_worker_stops_the_client(sessions):
    a, _ = sessions
    set_session(a, desired_state=DesiredState.STOPPED, state=SessionState.CONNECTED, jid=JID)
    assert a.pending() == "Stopping…"
    set_session(a, state=SessionState.STOPPED)
    assert a.pending() == ""


def test_start_is_pending_until_a_worker_starts_a_client(sessions):
    a, _ = sessions
    set_session(a, desired_state=DesiredState.RUNNING)
    assert a.pending() == "Starting…"
    set_session(a, state=SessionState.STARTING)
    assert a.pending() == ""


def test_a_requested_logout_is_pending_and_not_offered_twice(sessions):
    a, _ = sessions
    set_session(
        a,
        desired_state=DesiredState.RUNNING,
        state=SessionState.CONNECTED,
        jid=JID,
        logout_requested_at=timezone.now(),
    )
    assert a.pending() == "Logging out…"
    assert "logout" not in a.available_actions()


def test_the_page_shows_the_pending_word_and_only_the_fitting_buttons(client, tenants, sessions):
    a, _ = sessions
    set_session(a, desired_state=DesiredState.STOPPED, state=SessionState.CONNECTED, jid=JID)
    client.force_login(tenants.owner)
    html = client.get(f"/admin/whatsapp/whatsappsession/{a.pk}/change/").content.decode()
    assert "Stopping…" in html
    assert "wa-action-start" in html and "wa-action-stop" not in html
    assert 'data-confirm="Log Salon Alpha out of WhatsApp?' in html
    assert "wa-action-logout wa-danger" in html
