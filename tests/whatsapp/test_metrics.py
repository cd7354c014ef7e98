"""/metrics: Prometheus text, parsed with prometheus_client's own parser, whose
values are the database's (so every process serving it reports the same)."""

from datetime import timedelta

import pytest
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from whatsapp.models import (
    ConnectionEvent,
    DesiredState,
    InboundMessage,
    Incident,
    IncidentKind,
    OutboundMessage,
    ProcessingJob,
    SessionState,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    WhatsAppSession,
    WorkerProcess,
)
from whatsapp.services.inbound import record_inbound_message
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def metrics_open(settings):
    """Open without a token (as with METRICS_PUBLIC=1); TestToken covers the gate."""
    settings.METRICS_TOKEN = ""
    settings.METRICS_PUBLIC = True


def scrape(client, **headers):
    response = client.get("/metrics", secure=True, **headers)
    assert response.status_code == 200, response.content[:500]
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def inbound(company, message_id):
    event = message_event(message_id, "4915112345678@s.whatsapp.net", "hi", push_name="Eve")
    return record_inbound_message(company.pk, normalize_message(event))


@pytest.fixture
def world(tenants):
    now = timezone.now()
    a = WhatsAppSession.objects.create(
        company=tenants.a,
        desired_state=DesiredState.RUNNING,
        state=SessionState.CONNECTED,
        reconnect_count=4,
        conflict_count=1,
        connect_failure_count=2,
        messages_out=3,
    )
    b = WhatsAppSession.objects.create(
        company=tenants.b,
        desired_state=DesiredState.RUNNING,
        state=SessionState.REPLACED,
        conflict_count=2,
    )
    for i in range(3):
        inbound(tenants.a, f"A-{i}")
    inbound(tenants.a, "A-0")  # duplicate
    inbound(tenants.a, "A-1")  # duplicate
    inbound(tenants.b, "B-0")

    # Job latencies: 0.2 s, 3 s and 100 s after the message was received; one job open.
    latencies = [0.2, 3.0, 100.0]
    for message, seconds in zip(
        InboundMessage.objects.filter(company=tenants.a).order_by("id"), latencies, strict=True
    ):
        ProcessingJob.objects.filter(message=message).update(
            status=ProcessingJob.Status.SUCCEEDED,
            finished_at=message.received_at + timedelta(seconds=seconds),
        )
    ProcessingJob.objects.filter(message__wa_message_id="A-2").update(
        status=ProcessingJob.Status.FAILED
    )

    for status in ["sent", "sent", "failed", "queued"]:
        OutboundMessage.objects.create(
            company=tenants.a,
            to_jid="491511@s.whatsapp.net",
            text="x",
            status=status,
            idempotency_key=f"k-{OutboundMessage.objects.count()}",
        )
    for kind in ["disconnected", "reconnected", "reconnected", "replaced", "lease_acquired"]:
        ConnectionEvent.objects.create(session=a, kind=kind)
    ConnectionEvent.objects.create(session=b, kind="replaced")

    endpoint = WebhookEndpoint.objects.create(company=tenants.a, url="https://93.184.215.14/h")
    ok = WebhookDelivery.objects.create(
        endpoint=endpoint,
        company=tenants.a,
        event_type="message.received",
        payload={},
        status="succeeded",
    )
    dead = WebhookDelivery.objects.create(
        endpoint=endpoint,
        company=tenants.a,
        event_type="message.received",
        payload={},
        status="dead",
    )
    WebhookAttempt.objects.create(delivery=ok, number=1, status_code=200, succeeded=True)
    for n in (1, 2, 3):
        WebhookAttempt.objects.create(delivery=dead, number=n, status_code=500)

    WorkerProcess.objects.create(worker_id="w-live", channel_name="a", heartbeat_at=now)
    WorkerProcess.objects.create(worker_id="w-live2", channel_name="b", heartbeat_at=now)
    WorkerProcess.objects.create(
        worker_id="w-old", channel_name="c", heartbeat_at=now - timedelta(hours=1)
    )
    WorkerProcess.objects.create(
        worker_id="w-stopped", channel_name="d", heartbeat_at=now, stopped_at=now
    )
    Incident.objects.create(
        subject=f"company:{tenants.b.pk}", kind=IncidentKind.CONFLICT, summary="b replaced"
    )
    return tenants


class TestValues:
    def test_sessions_by_state_and_per_company_counters(self, client, world):
        m = scrape(client)
        assert value(m, "aiadmin_whatsapp_sessions", state="connected") == 1
        assert value(m, "aiadmin_whatsapp_sessions", state="replaced") == 1
        assert value(m, "aiadmin_whatsapp_sessions", state="logged_out") == 0
        assert value(m, "aiadmin_whatsapp_session_connected", company="alpha") == 1
        assert value(m, "aiadmin_whatsapp_session_connected", company="beta") == 0
        assert value(m, "aiadmin_whatsapp_reconnects_total", company="alpha") == 4
        assert value(m, "aiadmin_whatsapp_conflicts_total", company="alpha") == 1
        assert value(m, "aiadmin_whatsapp_conflicts_total", company="beta") == 2
        assert value(m, "aiadmin_whatsapp_connect_failures_total", company="alpha") == 2

    def test_connection_events_by_company_and_reason(self, client, world):
        m = scrape(client)
        events = "aiadmin_whatsapp_connection_events_total"
        assert value(m, events, company="alpha", reason="reconnected") == 2
        assert value(m, events, company="alpha", reason="disconnected") == 1
        assert value(m, events, company="alpha", reason="replaced") == 1
        assert value(m, events, company="beta", reason="replaced") == 1
        assert (events, (("company", "alpha"), ("reason", "lease_acquired"))) not in m

    def test_messages_in_and_out_and_duplicates_match_the_database(self, client, world):
        m = scrape(client)
        for slug in ("alpha", "beta"):
            session = WhatsAppSession.objects.get(company__slug=slug)
            received = InboundMessage.objects.filter(company__slug=slug).count()
            assert session.messages_in == received
            assert value(m, "aiadmin_whatsapp_messages_received_total", company=slug) == received
            assert (
                value(m, "aiadmin_whatsapp_duplicates_blocked_total", company=slug)
                == session.duplicates_blocked
            )
        assert value(m, "aiadmin_whatsapp_messages_received_total", company="alpha") == 3
        assert value(m, "aiadmin_whatsapp_duplicates_blocked_total", company="alpha") == 2
        assert value(m, "aiadmin_whatsapp_messages_sent_total", company="alpha") == 3
        outbound = "aiadmin_whatsapp_outbound_messages"
        assert value(m, outbound, company="alpha", status="sent") == 2
        assert value(m, outbound, company="alpha", status="failed") == 1
        assert value(m, outbound, company="alpha", status="queued") == 1

    def test_job_latency_histogram_and_failures_come_from_job_timestamps(self, client, world):
        m = scrape(client)
        hist = "aiadmin_whatsapp_job_latency_seconds"
        assert value(m, f"{hist}_bucket", le="0.1") == 0
        assert value(m, f"{hist}_bucket", le="0.25") == 1
        assert value(m, f"{hist}_bucket", le="2.5") == 1
        assert value(m, f"{hist}_bucket", le="5.0") == 2
        assert value(m, f"{hist}_bucket", le="60.0") == 2
        assert value(m, f"{hist}_bucket", le="120.0") == 3
        assert value(m, f"{hist}_bucket", le="+Inf") == 3
        assert value(m, f"{hist}_count") == 3
        assert value(m, f"{hist}_sum") == pytest.approx(103.2, abs=0.01)
        jobs = "aiadmin_whatsapp_processing_jobs"
        assert value(m, jobs, status="failed") == 1
        assert value(m, jobs, status="succeeded") == 2
        assert value(m, jobs, status="queued") + value(m, jobs, status="pending") == 1

    def test_webhook_outcomes_workers_and_incidents(self, client, world):
        m = scrape(client)
        assert value(m, "aiadmin_webhook_deliveries", status="succeeded") == 1
        assert value(m, "aiadmin_webhook_deliveries", status="dead") == 1
        assert value(m, "aiadmin_webhook_deliveries", status="retrying") == 0
        assert value(m, "aiadmin_webhook_attempts_total", outcome="success") == 1
        assert value(m, "aiadmin_webhook_attempts_total", outcome="failure") == 3
        assert value(m, "aiadmin_whatsapp_workers_live") == 2
        assert value(m, "aiadmin_incidents_open", kind="conflict") == 1
        assert value(m, "aiadmin_incidents_open", kind="worker_dead") == 0

    def test_values_follow_the_database_not_process_memory(self, client, world):
        before = scrape(client)
        # Another process (a worker) writes the row; this process counted nothing.
        WhatsAppSession.objects.filter(company__slug="alpha").update(
            reconnect_count=9, state=SessionState.RECONNECTING
        )
        after = scrape(client)
        assert value(before, "aiadmin_whatsapp_reconnects_total", company="alpha") == 4
        assert value(after, "aiadmin_whatsapp_reconnects_total", company="alpha") == 9
        assert value(after, "aiadmin_whatsapp_sessions", state="reconnecting") == 1
        assert value(after, "aiadmin_whatsapp_sessions", state="connected") == 0

    def test_an_empty_database_still_answers_every_family(self, client, db):
        m = scrape(client)
        assert value(m, "aiadmin_whatsapp_sessions", state="connected") == 0
        assert value(m, "aiadmin_whatsapp_job_latency_seconds_count") == 0
        assert value(m, "aiadmin_whatsapp_workers_live") == 0


class TestToken:
    def test_without_a_token_metrics_are_refused_in_production(self, client, db, settings):
        settings.METRICS_TOKEN, settings.METRICS_PUBLIC, settings.DEBUG = "", False, False
        response = client.get("/metrics", secure=True)
        assert response.status_code == 403
        assert b"METRICS_TOKEN" in response.content
        assert b"aiadmin_" not in response.content

    def test_metrics_public_opens_them_without_a_token(self, client, db, settings):
        settings.METRICS_TOKEN, settings.METRICS_PUBLIC, settings.DEBUG = "", True, False
        assert client.get("/metrics", secure=True).status_code == 200

    def test_a_development_run_opens_them_without_a_token(self, client, db, settings):
        settings.METRICS_TOKEN, settings.METRICS_PUBLIC, settings.DEBUG = "", False, True
        assert client.get("/metrics", secure=True).status_code == 200

    def test_a_token_is_required_even_when_metrics_public_is_set(self, client, db, settings):
        settings.METRICS_TOKEN, settings.METRICS_PUBLIC = "s3cret-scrape-token", True
        assert client.get("/metrics", secure=True).status_code == 401

    def test_with_a_token_setting_a_bearer_token_is_required(self, client, db, settings):
        settings.METRICS_TOKEN = "s3cret-scrape-token"
        missing = client.get("/metrics", secure=True)
        assert missing.status_code == 401
        assert missing["WWW-Authenticate"].startswith("Bearer")
        wrong = client.get("/metrics", secure=True, HTTP_AUTHORIZATION="Bearer nope")
        assert wrong.status_code == 401
        basic = client.get("/metrics", secure=True, HTTP_AUTHORIZATION="Basic s3cret-scrape-token")
        assert basic.status_code == 401
        m = scrape(client, HTTP_AUTHORIZATION="Bearer s3cret-scrape-token")
        assert value(m, "aiadmin_whatsapp_workers_live") == 0

    def test_only_get_is_allowed(self, client, db, settings):
        assert client.post("/metrics", secure=True).status_code == 405


def test_an_openmetrics_scraper_gets_openmetrics(client, world):
    from prometheus_client.openmetrics.parser import (
        text_string_to_metric_families as parse_openmetrics,
    )

    response = client.get(
        "/metrics", secure=True, HTTP_ACCEPT="application/openmetrics-text; version=1.0.0"
    )
    assert response["Content-Type"].startswith("application/openmetrics-text")
    families = {f.name: f for f in parse_openmetrics(response.content.decode())}
    sample = next(
        s for s in families["aiadmin_whatsapp_reconnects"].samples if s.labels["company"] == "alpha"
    )
    assert sample.value == 4


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_two_web_processes_report_the_same_values(world, tmp_path):
    """Two real daphne processes answer /metrics from the same database: equal
    numbers, whichever one Prometheus happens to scrape."""
    import urllib.request

    from tests.e2e_processes import AppProcesses, wait_for

    app = AppProcesses(tmp_path, METRICS_TOKEN="scrape-token-e2e")

    def fetch(port):
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics",
            headers={"Authorization": "Bearer scrape-token-e2e", "Host": "localhost"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.read().decode()
        except OSError:
            return None

    def parsed(text):
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    try:
        ports = [app.start_daphne("web1"), app.start_daphne("web2")]
        texts = [wait_for(lambda p=p: fetch(p), 60, f"daphne on {p}") for p in ports]
    except AssertionError:
        print(app.logs())
        raise
    finally:
        app.stop_all()
    first, second = (parsed(t) for t in texts)
    assert first == second
    assert value(first, "aiadmin_whatsapp_messages_received_total", company="alpha") == 3
    assert value(first, "aiadmin_whatsapp_duplicates_blocked_total", company="alpha") == 2
    assert value(first, "aiadmin_whatsapp_job_latency_seconds_count") == 3
