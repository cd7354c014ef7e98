"""Plain words where an operator expects them: errors by their cause (raw text
behind "technical details"), stale errors greyed once connected again, the
worker as a machine and process, and one date/time format with the company's
time zone named on every page."""

import re
import zoneinfo
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from whatsapp.models import (
    ConnectionEvent,
    InboundMessage,
    Incident,
    ProcessingJob,
    SessionLease,
    WorkerProcess,
)
from whatsapp.models.error_words import UNKNOWN, describe_error
from whatsapp.models.workers import describe_worker

from .conftest import add_events, login, set_session

Kind = ConnectionEvent.Kind
DNS = (
    "failed to dial whatsapp web websocket: dial tcp: lookup web.whatsapp.com on "
    "127.0.0.53:53: no such host"
)
ONE_FORMAT = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [A-Z][A-Za-z0-9+-]+")


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (DNS, "Could not look up WhatsApp's server (DNS failure)"),
        ("dial tcp 157.240.0.53:443: connect: connection refused", "refused the connection"),
        ("read tcp 10.0.0.2:5222->157.240.0.53:443: read: connection reset by peer", "cut off"),
        ("failed to read frame header: EOF", "cut off"),
        ("dial tcp 157.240.0.53:443: i/o timeout", "did not answer in time"),
        ("context deadline exceeded", "did not answer in time"),
        ("tls: failed to verify certificate: x509: certificate signed by unknown authority",
         "secure (TLS) connection"),
        ("dial tcp: connect: network is unreachable", "no network route"),
        ("connect failure LOGGED_OUT: 401", "Logged out of WhatsApp"),
        ("logged out: device_removed", "scan a new QR code"),
        ("stream replaced (440 conflict): another client uses this device", "took over"),
        ("stream error 515", "routine reconnection"),
        ("temporarily banned by WhatsApp (TEMP_BANNED)", "blocked this number"),
        ("connect failure CLIENT_OUTDATED: 405", "outdated"),
        ("something nobody has seen", UNKNOWN),
    ],
)
def test_a_raw_error_reads_as_its_cause(raw, words):
    described = describe_error(raw)
    assert words in described.text
    assert described.details == raw  # kept whole for the toggle


def test_a_retry_delay_is_said_in_seconds():
    text = describe_error("dial tcp: i/o timeout (failure 3; retry in 12.4s)").text
    assert text.endswith("trying again in 12 s")


def test_the_session_page_shows_the_cause_with_the_raw_error_behind_a_toggle(
    client, tenants, sessions
):
    a, _ = sessions
    set_session(a, desired_state="running", state="failed", last_error=DNS,
                last_error_at=timezone.now() - timedelta(minutes=2))
    add_events(a, Kind.CONNECT_FAILED, reason=f"{DNS} (failure 1; retry in 2.0s)",
               state="failed")
    html = login(client, tenants.owner).get(
        reverse("admin:whatsapp_whatsappsession_change", args=[a.pk])
    ).content.decode()
    status = html.split('id="wa-session-status"')[1].split('id="wa-session-history"')[0]
    assert "Could not look up WhatsApp&#x27;s server (DNS failure)" in status
    visible = re.sub(r"<details.*?</details>", "", status, flags=re.S)
    assert "no such host" not in visible  # only behind the toggle
    assert "<summary>technical details</summary><code data-error-raw>failed to dial" in status
    history = html.split('id="wa-session-history"')[1]
    reasons = history.split("Recent connection events")[0]
    assert "Could not connect: could not look up" in reasons  # "Latest reason"
    assert "no such host" not in re.sub(r"<details.*?</details>", "", reasons, flags=re.S)


def test_the_list_and_dashboard_grey_a_stale_error_once_connected_again(
    client, tenants, sessions
):
    a, _ = sessions
    now = timezone.now()
    set_session(a, desired_state="running", state="connected", last_error=DNS,
                last_error_at=now - timedelta(minutes=9),
                connected_since=now - timedelta(minutes=1))
    login(client, tenants.owner)
    for url in [reverse("admin:whatsapp_whatsappsession_changelist"), reverse("whatsapp_health")]:
        html = client.get(url).content.decode()
        assert 'class="wa-error wa-error-resolved" data-error-words>Could not look up' in html
        assert "resolved: connected again since" in html
        assert "no such host" not in re.sub(r"<details.*?</details>|title=\"[^\"]*\"", "", html,
                                            flags=re.S)
    set_session(a, state="reconnecting", connected_since=None)
    html = client.get(reverse("whatsapp_health")).content.decode()
    assert 'class="wa-error" data-error-words>Could not look up' in html


def test_the_worker_reads_as_a_machine_and_process_with_its_id_in_the_details(
    client, tenants, sessions
):
    a, _ = sessions
    now = timezone.now()
    WorkerProcess.objects.create(
        worker_id="vm.30719.709a9e01", channel_name="c", hostname="vm", pid=30719,
        started_at=now - timedelta(hours=3, minutes=5), heartbeat_at=now,
    )
    SessionLease.objects.filter(session=a).update(
        owner="vm.30719.709a9e01", epoch=4, expires_at=now + timedelta(seconds=30)
    )
    words = describe_worker("vm.30719.709a9e01", WorkerProcess.objects.get(), now)
    assert words.text == "worker on vm (process 30719), running for 3\xa0hours, 5\xa0minutes"
    login(client, tenants.superuser)
    for url in [reverse("admin:whatsapp_whatsappsession_change", args=[a.pk]),
                reverse("whatsapp_health")]:
        html = client.get(url).content.decode()
        assert "worker on vm (process 30719), running for 3" in html
        visible = re.sub(r"<details.*?</details>", "", html, flags=re.S)
        assert "709a9e01" not in visible and "epoch" not in visible
        assert "worker id vm.30719.709a9e01" in html
    for url in [reverse("admin:whatsapp_sessionlease_changelist"),
                reverse("admin:whatsapp_workerprocess_changelist")]:
        html = client.get(url).content.decode()
        assert "worker on vm (process 30719)" in html
        assert "709a9e01" not in re.sub(r"<details.*?</details>", "", html, flags=re.S)
    # A worker whose row is gone still reads as its machine and process.
    assert describe_worker("web-1.42.0badc0de").text == "worker on web-1 (process 42)"


def test_no_jargon_labels_for_states_and_events(client, tenants, sessions):
    a, b = sessions
    set_session(b, state="replaced")
    set_session(a, jid="491701234567:7@s.whatsapp.net", phone="+491701234567")
    add_events(a, Kind.STARTING, reason="start requested demo")
    add_events(a, Kind.LEASE_ACQUIRED, reason="epoch 1")
    login(client, tenants.superuser)
    for url in [reverse("whatsapp_health"), reverse("admin:whatsapp_whatsappsession_changelist"),
                reverse("admin:whatsapp_connectionevent_changelist"),
                reverse("admin:whatsapp_whatsappsession_change", args=[a.pk])]:
        html = re.sub(r"<details.*?</details>", "", client.get(url).content.decode(), flags=re.S)
        html = re.sub(r"<(script|style|svg)\b.*?</\1>", "", html, flags=re.S)
        for jargon in ["440", "Lease acquired", "whatsmeow", "epoch 1<", "@s.whatsapp.net",
                       "requested demo"]:
            assert jargon not in html, (url, jargon)
    assert "Taken over by another device" in client.get(reverse("whatsapp_health")).content.decode()


def test_every_list_shows_times_in_one_format_in_the_company_zone(client, tenants, sessions):
    a, _ = sessions
    tenants.a.timezone = "Asia/Tokyo"
    tenants.a.save()
    at = timezone.now().replace(hour=1, minute=2, second=3, microsecond=0)
    ConnectionEvent.objects.create(session=a, kind=Kind.CONNECTED, state="connected",
                                   created_at=at)
    message = InboundMessage.objects.create(
        company=tenants.a, wa_message_id="M1", chat_jid="1@s.whatsapp.net",
        sender_jid="1@s.whatsapp.net", text="hi", received_at=at, sent_at=at,
    )
    ProcessingJob.objects.filter(message=message).update(created_at=at)
    if not ProcessingJob.objects.filter(message=message).exists():
        ProcessingJob.objects.create(message=message, created_at=at)
    Incident.objects.create(company=tenants.a, kind="logged_out", subject="s",
                            summary="logged out", opened_at=at, last_seen_at=at)
    tokyo = timezone.localtime(at, zoneinfo.ZoneInfo("Asia/Tokyo"))
    expected = tokyo.strftime("%Y-%m-%d %H:%M:%S") + " JST"
    login(client, tenants.superuser)
    for name in ["connectionevent", "inboundmessage", "processingjob", "incident"]:
        html = client.get(reverse(f"admin:whatsapp_{name}_changelist")).content.decode()
        assert expected in html, name
        assert "a.m." not in html and "p.m." not in html, name  # Django's default format
    # A read-only change page renders in its company's zone, in the same format.
    html = client.get(
        reverse("admin:whatsapp_incident_change", args=[Incident.objects.get().pk])
    ).content.decode()
    assert expected in html
    # The dashboard names its zone ("as of ..."): the only company's.
    tenants.b.timezone = "Asia/Tokyo"
    tenants.b.save()
    html = client.get(reverse("whatsapp_health")).content.decode()
    as_of = html.split("as of ")[1][:30]
    assert ONE_FORMAT.match(as_of) and " JST" in as_of


def test_the_jobs_list_names_a_message_by_its_text_and_sender_not_its_whatsapp_id(
    client, tenants
):
    message = InboundMessage.objects.create(
        company=tenants.a, wa_message_id="3EB0ABCDEF0123456789", chat_jid="1@s.whatsapp.net",
        sender_jid="1@s.whatsapp.net", sender_phone="+4915112345678", text="opening hours?",
        received_at=timezone.now(), sent_at=timezone.now(),
    )
    if not ProcessingJob.objects.filter(message=message).exists():
        ProcessingJob.objects.create(message=message)
    html = login(client, tenants.superuser).get(
        reverse("admin:whatsapp_processingjob_changelist")
    ).content.decode()
    assert "“opening hours?” <small>from +4915112345678 (Salon Alpha)</small>" in html
    assert "3EB0ABCDEF0123456789" not in html
