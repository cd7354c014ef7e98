"""The session page: state, 24 h timeline as server-rendered SVG, reconnect
reasons, recent messages and jobs, QR code and pairing code; and the small JSON
endpoint the pages poll while their WebSocket is down."""

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from whatsapp.models import (
    ConnectionEvent,
    InboundMessage,
    OutboundMessage,
    ProcessingJob,
    SessionState,
)
from whatsapp.models.health import reconnect_reasons, state_timeline

from .conftest import add_events, login, set_session

Kind = ConnectionEvent.Kind
JID_PAIRED = "491701234567:3@s.whatsapp.net"


def page(session):
    return reverse("admin:whatsapp_whatsappsession_change", args=[session.pk])


def test_it_draws_the_last_24_hours_of_states_as_svg(client, tenants, sessions):
    a, _ = sessions
    add_events(a, Kind.STARTING, minutes_ago=26 * 60, state="starting")  # before the window
    add_events(a, Kind.CONNECTED, minutes_ago=20 * 60, state="connected")
    add_events(a, Kind.DISCONNECTED, minutes_ago=12 * 60, state="reconnecting", reason="eof")
    add_events(a, Kind.RECONNECTED, minutes_ago=6 * 60, state="connected")
    html = login(client, tenants.superuser).get(page(a)).content.decode()
    svg = html[
        html.index('<svg class="wa-timeline"') : html.index("</svg>", html.index("wa-timeline"))
    ]
    states = [part.split('"')[0] for part in svg.split('data-state="')[1:]]
    assert states == ["starting", "connected", "reconnecting", "connected"]
    assert 'class="wa-mark wa-mark-disconnected"' in svg
    assert "cut off midway" in svg  # the drop's reason, in plain words, is its tooltip


def test_the_timeline_places_segments_in_proportion_to_time(tenants, sessions):
    a, _ = sessions
    now = timezone.now()
    a = set_session(a, created_at=now - timedelta(days=2))
    ConnectionEvent.objects.create(
        session=a, kind=Kind.CONNECTED, state="connected", created_at=now - timedelta(hours=18)
    )
    ConnectionEvent.objects.create(
        session=a, kind=Kind.REPLACED, state="replaced", created_at=now - timedelta(hours=6)
    )
    timeline = state_timeline(a, now=now)
    assert [(s.state, s.x, s.width) for s in timeline.segments] == [
        ("stopped", 0, 250.0),
        ("connected", 250.0, 500.0),
        ("replaced", 750.0, 250.0),
    ]
    assert timeline.time_in("connected") == timedelta(hours=12)
    assert [m.kind for m in timeline.marks] == ["replaced"]


def test_the_timeline_starts_when_the_session_was_created(tenants, sessions):
    a, _ = sessions
    now = timezone.now()
    a = set_session(a, created_at=now - timedelta(hours=6))
    ConnectionEvent.objects.create(
        session=a, kind=Kind.CONNECTED, state="connected", created_at=now - timedelta(hours=3)
    )
    timeline = state_timeline(a, now=now)
    assert timeline.drawn_from == now - timedelta(hours=6)
    assert [(s.state, s.x, s.width) for s in timeline.segments] == [
        ("stopped", 750.0, 125.0),
        ("connected", 875.0, 125.0),
    ]


def test_a_few_minutes_of_trouble_stay_visible_in_a_day(tenants, sessions):
    a, _ = sessions
    now = timezone.now()
    a = set_session(a, created_at=now - timedelta(days=2))
    for minutes, state in [(600, "connected"), (300, "reconnecting"), (298, "connected")]:
        ConnectionEvent.objects.create(
            session=a, kind=Kind.CONNECTED, state=state, created_at=now - timedelta(minutes=minutes)
        )
    blip = [s for s in state_timeline(a, now=now).segments if s.state == "reconnecting"]
    assert len(blip) == 1 and blip[0].width == 4  # 2 min of 24 h is 1.4 units


def test_the_windows_have_dated_ticks_in_the_company_time_zone(tenants, sessions):
    a, _ = sessions
    tenants.a.timezone = "Asia/Tokyo"
    tenants.a.save()
    a.refresh_from_db()
    now = datetime(2026, 12, 2, 3, 12, tzinfo=UTC)
    day = state_timeline(a, now=now, window="24h")
    assert [label for _, label in day.ticks] == [
        "01 Dec 12:12",
        "01 Dec 18:12",
        "02 Dec 00:12",
        "02 Dec 06:12",
        "02 Dec 12:12",
    ]
    assert day.tz_name == "Asia/Tokyo"
    week = state_timeline(a, now=now, window="7d")
    assert len(week.ticks) == 8 and week.ticks[-1][1] == "Wed 02 Dec"
    hour = state_timeline(a, now=now, window="1h")
    assert [label for _, label in hour.ticks] == ["11:12", "11:27", "11:42", "11:57", "12:12"]


def test_the_page_offers_one_hour_a_day_and_a_week(client, tenants, sessions):
    a, _ = sessions
    login(client, tenants.owner)
    html = client.get(page(a), {"window": "7d"}).content.decode()
    assert '<strong data-window="7d">7 d</strong>' in html
    assert 'href="?window=1h"' in html and 'href="?window=24h"' in html
    assert client.get(page(a), {"window": "nonsense"}).status_code == 200


def test_a_session_without_history_is_one_segment_of_its_current_state(tenants, sessions):
    a, _ = sessions
    set_session(a, state=SessionState.FAILED)
    a.events.all().delete()
    assert [s.state for s in state_timeline(a).segments] == ["failed"]


def test_it_summarises_reconnect_reasons_of_the_last_day(client, tenants, sessions):
    a, _ = sessions
    add_events(a, Kind.CONNECT_FAILED, count=3, minutes_ago=30, reason="dial tcp: no route")
    add_events(a, Kind.REPLACED, count=1, minutes_ago=10, reason="another client")
    add_events(a, Kind.CONNECT_FAILED, count=5, minutes_ago=30 * 60, reason="too old")
    rows = reconnect_reasons(a)
    assert [(r.kind, r.count, r.last_reason) for r in rows] == [
        ("connect_failed", 3, "dial tcp: no route"),
        ("replaced", 1, "another client"),
    ]
    html = login(client, tenants.superuser).get(page(a)).content.decode()
    assert 'data-reason-kind="connect_failed"' in html and "dial tcp: no route" in html
    reasons_table = html[html.index("Reconnect reasons") : html.index("Recent connection events")]
    assert "dial tcp: no route" in reasons_table and "too old" not in reasons_table


def test_it_shows_recent_inbound_messages_with_their_jobs_and_recent_outbound(
    client, tenants, sessions
):
    a, b = sessions
    msg = InboundMessage.objects.create(
        company=tenants.a,
        wa_message_id="WA1",
        chat_jid="491701@s.whatsapp.net",
        sender_jid="491701@s.whatsapp.net",
        sender_phone="+491701",
        push_name="Ana",
        text="Hallo, Termin morgen?",
        sent_at=timezone.now(),
    )
    ProcessingJob.objects.create(
        message=msg, status=ProcessingJob.Status.FAILED, attempts=3, error="handler exploded"
    )
    OutboundMessage.objects.create(
        company=tenants.a,
        to_jid="491701@s.whatsapp.net",
        to_phone="+491701",
        text="Gerne!",
        idempotency_key="k1",
    )
    InboundMessage.objects.create(
        company=tenants.b,
        wa_message_id="WB1",
        chat_jid="x@s.whatsapp.net",
        sender_jid="x@s.whatsapp.net",
        text="secret of beta",
        sent_at=timezone.now(),
    )
    html = login(client, tenants.owner).get(page(a)).content.decode()
    for text in ["Hallo, Termin morgen?", "Ana", "Failed", "handler exploded", "Gerne!"]:
        assert text in html, text
    assert "secret of beta" not in html


def test_it_renders_the_qr_code_as_inline_svg_and_follows_its_rotation(client, tenants, sessions):
    a, _ = sessions
    set_session(
        a,
        state=SessionState.AWAITING_PAIRING,
        qr_code="2@first-code,abc,def",
        qr_updated_at=timezone.now(),
    )
    login(client, tenants.owner)
    first = client.get(page(a)).content.decode()
    assert '<div class="wa-qr"' in first and 'class="segno"' in first
    set_session(a, qr_code="2@second-code,ghi,jkl", qr_updated_at=timezone.now())
    second = client.get(page(a)).content.decode()

    def qr_path(html):
        start = html.index('class="segno"')
        return html[start : html.index("</svg>", start)]

    assert qr_path(first) != qr_path(second)


def test_it_shows_an_issued_pairing_code(client, tenants, sessions):
    a, _ = sessions
    set_session(
        a, pairing_code="ABCD-EFGH", pairing_phone="+491701234567", pairing_code_at=timezone.now()
    )
    html = login(client, tenants.owner).get(page(a)).content.decode()
    assert "ABCD-EFGH" in html and "+491701234567" in html


def test_a_member_sees_the_page_without_the_controls(client, tenants, sessions):
    a, _ = sessions
    html = login(client, tenants.member).get(page(a)).content.decode()
    assert "wa-session-status" in html
    assert "wa-action-start" not in html and "Request pairing code" not in html
    html = login(client, tenants.owner).get(page(a)).content.decode()
    assert "wa-action-start" in html and "Request pairing code" in html


def test_the_status_endpoint_answers_with_the_visible_sessions(client, tenants, sessions):
    a, b = sessions
    set_session(a, state=SessionState.CONNECTED, reconnect_count=2)
    add_events(a, Kind.CONNECTED, state="connected")
    login(client, tenants.owner)
    data = client.get(reverse("admin:whatsapp_session_status")).json()
    assert [(s["company_id"], s["state"], s["reconnect_count"]) for s in data["sessions"]] == [
        (tenants.a.pk, "connected", 2)
    ]
    one = client.get(reverse("admin:whatsapp_session_status_one", args=[a.pk])).json()
    assert one["sessions"][0]["last_event_id"] == a.events.order_by("-id").first().pk


@pytest.mark.parametrize("user", ["other_owner", "outsider"])
def test_it_validates_ownership(client, tenants, sessions, user):
    a, b = sessions
    login(client, getattr(tenants, user))
    assert client.get(page(a)).status_code == 404
    status_one = reverse("admin:whatsapp_session_status_one", args=[a.pk])
    assert client.get(status_one).status_code in {403, 404}
    sessions_seen = client.get(reverse("admin:whatsapp_session_status"))
    if user == "outsider":
        assert sessions_seen.status_code == 403
    else:
        assert [s["company_id"] for s in sessions_seen.json()["sessions"]] == [tenants.b.pk]
    client.logout()
    assert client.get(page(a)).status_code == 302  # anonymous: to the login page


def test_the_pairing_form_is_offered_only_while_unpaired(client, tenants, sessions):
    a, _ = sessions
    login(client, tenants.owner)
    assert "Request pairing code" in client.get(page(a)).content.decode()
    set_session(a, jid=JID_PAIRED)
    assert "Request pairing code" not in client.get(page(a)).content.decode()


def test_an_error_from_before_the_current_connection_is_shown_as_resolved(
    client, tenants, sessions
):
    a, _ = sessions
    now = timezone.now()
    set_session(
        a,
        desired_state="running",
        state="connected",
        last_error="dial tcp: i/o timeout",
        last_error_at=now - timedelta(minutes=5),
        connected_since=now - timedelta(minutes=1),
    )
    html = login(client, tenants.owner).get(page(a)).content.decode()
    assert 'class="wa-error wa-error-resolved" data-error-words' in html
    assert "resolved: connected again since" in html
    set_session(a, state="reconnecting", connected_since=None)
    html = client.get(page(a)).content.decode()
    assert 'class="wa-error" data-error-words' in html


def test_times_are_shown_in_the_company_time_zone_which_is_named(client, tenants, sessions):
    a, _ = sessions
    tenants.a.timezone = "Europe/Berlin"
    tenants.a.save()
    html = login(client, tenants.owner).get(page(a)).content.decode()
    assert "Europe/Berlin" in html
    assert " CET" in html or " CEST" in html
    assert " UTC" not in html.split('id="wa-session-status"')[1].split("wa-session-history")[0]


def test_events_read_as_plain_words_with_the_details_behind_a_toggle(client, tenants, sessions):
    a, _ = sessions
    ConnectionEvent.objects.create(
        session=a, kind="lease_acquired", reason="epoch 1", worker_id="vm.30719.709a9e01"
    )
    html = login(client, tenants.owner).get(page(a)).content.decode()
    assert "A worker took charge of this session" in html
    assert (
        "<summary>technical details</summary><code>epoch 1; worker vm.30719.709a9e01</code>"
        in html
    )
