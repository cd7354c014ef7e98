"""Alerts: one incident per problem, one alert when it opens and one recovery
notice when it resolves, by mail to ADMINS and a Slack-compatible chat webhook
(a real local HTTP server), however often -- and however concurrently -- the
check runs."""

import io
import threading
from datetime import timedelta

import pytest
from django.core import mail
from django.core.management import call_command
from django.db import connections
from django.urls import reverse
from django.utils import timezone
from django_q.models import Schedule

from companies.models import Company
from whatsapp.models import (
    ConnectionEvent,
    DesiredState,
    Incident,
    IncidentKind,
    SessionLease,
    SessionState,
    WhatsAppSession,
    WorkerProcess,
)
from whatsapp.services import leases, local_processes
from whatsapp.services.alerts import find_problems, run_alert_checks

from .http_receiver import running_receiver

Kind = IncidentKind


@pytest.fixture
def chat():
    with running_receiver() as started:
        yield started


@pytest.fixture
def alerting(settings, chat):
    settings.ADMINS = [("Ops", "ops@example.com")]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.WHATSAPP = {
        **settings.WHATSAPP,
        "DOWN_THRESHOLD_MINUTES": 10,
        "FLAP_RECONNECTS": 5,
        "FLAP_WINDOW_MINUTES": 15,
    }
    settings.WHATSAPP_ALERTS = {
        **settings.WHATSAPP_ALERTS,
        "CHAT_WEBHOOK_URL": chat.url,
        "WORKER_STALE_SECONDS": 60,
        "CHAT_TIMEOUT": 5,
    }
    mail.outbox = []
    return settings


def running_session(company, **fields):
    fields.setdefault("desired_state", DesiredState.RUNNING)
    return WhatsAppSession.objects.create(company=company, **fields)


def kinds(now):
    return sorted((f.subject, f.kind) for f in find_problems(now).values())


@pytest.mark.django_db
class TestOneAlertPerIncident:
    def test_a_lost_connection_alerts_once_and_recovers_once(self, tenants, alerting, chat):
        t0 = timezone.now()
        session = running_session(
            tenants.a, state=SessionState.CONNECTED, connected_since=t0 - timedelta(hours=2)
        )
        assert run_alert_checks(t0).opened == []

        # The connection drops; whatsmeow keeps trying.
        WhatsAppSession.objects.filter(pk=session.pk).update(
            state=SessionState.RECONNECTING,
            connected_since=None,
            disconnected_since=t0,
            last_error="websocket closed",
        )
        # Within the grace period: nothing.
        assert run_alert_checks(t0 + timedelta(minutes=5)).opened == []
        assert mail.outbox == [] and chat.requests == []

        # Past it: one incident, one mail, one chat message ...
        report = run_alert_checks(t0 + timedelta(minutes=11))
        assert len(report.opened) == 1 and report.alerts_sent == 1
        # ... and no more however often the check runs while it lasts.
        for minute in range(12, 20):
            again = run_alert_checks(t0 + timedelta(minutes=minute))
            assert again.opened == [] and again.alerts_sent == 0
        incident = Incident.objects.get()
        assert (incident.kind, incident.company, incident.is_open) == (
            Kind.CONNECTION_LOST,
            tenants.a,
            True,
        )
        assert incident.last_seen_at == t0 + timedelta(minutes=19)
        assert len(mail.outbox) == 1
        assert mail.outbox[0].to == ["ops@example.com"]
        assert "OPEN Connection lost" in mail.outbox[0].subject
        assert "Salon Alpha" in mail.outbox[0].subject
        assert "websocket closed" in mail.outbox[0].body
        assert len(chat.requests) == 1
        text = chat.requests[0].json()["text"]
        assert "OPEN Connection lost" in text and "Salon Alpha" in text

        # Back: one recovery notice, then silence.
        WhatsAppSession.objects.filter(pk=session.pk).update(
            state=SessionState.CONNECTED,
            connected_since=t0 + timedelta(minutes=20),
            disconnected_since=None,
        )
        report = run_alert_checks(t0 + timedelta(minutes=21))
        assert report.resolved == [incident.pk] and report.recoveries_sent == 1
        for minute in range(22, 25):
            assert run_alert_checks(t0 + timedelta(minutes=minute)).recoveries_sent == 0
        incident.refresh_from_db()
        assert incident.resolved_at == t0 + timedelta(minutes=21)
        assert len(mail.outbox) == 2 and "RESOLVED Connection lost" in mail.outbox[1].subject
        assert len(chat.requests) == 2 and "RESOLVED" in chat.requests[1].json()["text"]

    def test_a_new_outage_after_recovery_is_a_new_incident(self, tenants, alerting, chat):
        t0 = timezone.now()
        session = running_session(tenants.a, state=SessionState.FAILED, disconnected_since=t0)
        run_alert_checks(t0 + timedelta(minutes=11))
        WhatsAppSession.objects.filter(pk=session.pk).update(state=SessionState.CONNECTED)
        run_alert_checks(t0 + timedelta(minutes=12))
        WhatsAppSession.objects.filter(pk=session.pk).update(
            state=SessionState.FAILED, disconnected_since=t0 + timedelta(minutes=13)
        )
        run_alert_checks(t0 + timedelta(minutes=30))
        assert Incident.objects.count() == 2
        assert Incident.objects.filter(resolved_at__isnull=True).count() == 1
        assert len(mail.outbox) == 3  # alert, recovery, alert

    def test_a_failed_notification_is_retried_by_the_next_check_and_sent_once(
        self, tenants, alerting, chat, settings
    ):
        settings.ADMINS = []  # the chat webhook is the only channel
        chat.answer(500)
        t0 = timezone.now()
        running_session(tenants.a, state=SessionState.REPLACED)

        report = run_alert_checks(t0)
        assert len(report.opened) == 1 and report.alerts_sent == 0
        incident = Incident.objects.get()
        assert incident.alert_sent_at is None and "500" in incident.notify_error

        report = run_alert_checks(t0 + timedelta(minutes=1))
        assert report.opened == [] and report.alerts_sent == 1
        run_alert_checks(t0 + timedelta(minutes=2))
        assert len(chat.requests) == 2  # the failed one and the one that went through

    def test_one_working_channel_is_enough(self, tenants, alerting, chat):
        chat.answer(500)
        running_session(tenants.a, state=SessionState.LOGGED_OUT)
        assert run_alert_checks().alerts_sent == 1
        assert len(mail.outbox) == 1
        incident = Incident.objects.get()
        assert incident.alert_sent_at is not None and "chat webhook" in incident.notify_error
        run_alert_checks()
        assert len(mail.outbox) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_checks_open_one_incident_and_send_one_alert(tenants, alerting, chat):
    running_session(tenants.a, state=SessionState.REPLACED)
    running_session(
        tenants.b, state=SessionState.BANNED, ban_expires_at=timezone.now() + timedelta(hours=1)
    )
    barrier = threading.Barrier(4)
    errors, reports = [], []

    def check():
        try:
            barrier.wait()
            reports.append(run_alert_checks())
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=check) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert Incident.objects.count() == 2
    assert sum(len(r.opened) for r in reports) == 2
    assert sum(r.alerts_sent for r in reports) == 2
    assert len(mail.outbox) == 2 and len(chat.requests) == 2


@pytest.mark.django_db
class TestWhatIsAProblem:
    def test_conflicts_logouts_and_bans_are_problems_at_once(self, tenants, alerting):
        now = timezone.now()
        c = Company.objects.create(name="Clinic Gamma", slug="gamma")
        running_session(tenants.a, state=SessionState.REPLACED, state_changed_at=now)
        running_session(tenants.b, state=SessionState.LOGGED_OUT, state_changed_at=now)
        running_session(
            c,
            state=SessionState.BANNED,
            state_changed_at=now,
            ban_expires_at=now + timedelta(hours=2),
        )
        assert kinds(now) == sorted(
            [
                (f"company:{tenants.a.pk}", Kind.CONFLICT),
                (f"company:{tenants.b.pk}", Kind.LOGGED_OUT),
                (f"company:{c.pk}", Kind.BANNED),
            ]
        )

    def test_an_expired_ban_is_a_lost_connection_once_past_the_grace(self, tenants, alerting):
        now = timezone.now()
        running_session(
            tenants.a,
            state=SessionState.BANNED,
            ban_expires_at=now - timedelta(minutes=1),
            disconnected_since=now - timedelta(minutes=30),
        )
        assert kinds(now) == [(f"company:{tenants.a.pk}", Kind.CONNECTION_LOST)]

    def test_sessions_nobody_wants_running_are_not_problems(self, tenants, alerting):
        now = timezone.now()
        running_session(
            tenants.a, desired_state=DesiredState.STOPPED, state=SessionState.LOGGED_OUT
        )
        Company.objects.filter(pk=tenants.b.pk).update(is_active=False)
        running_session(
            tenants.b, state=SessionState.FAILED, disconnected_since=now - timedelta(hours=1)
        )
        assert kinds(now) == []

    def test_flapping_is_n_reconnections_within_the_window(self, tenants, alerting):
        now = timezone.now()
        session = running_session(tenants.a, state=SessionState.CONNECTED, connected_since=now)
        for minutes in (1, 3, 5, 7):
            ConnectionEvent.objects.create(
                session=session, kind="reconnected", created_at=now - timedelta(minutes=minutes)
            )
        ConnectionEvent.objects.create(
            session=session, kind="reconnected", created_at=now - timedelta(minutes=40)
        )  # too old
        ConnectionEvent.objects.create(
            session=session, kind="disconnected", created_at=now - timedelta(minutes=2)
        )  # not one
        assert kinds(now) == []
        ConnectionEvent.objects.create(
            session=session, kind="reconnected", created_at=now - timedelta(minutes=9)
        )
        assert kinds(now) == [(f"company:{tenants.a.pk}", Kind.FLAPPING)]
        assert (
            "5 reconnections in 15 min"
            in find_problems(now)[(f"company:{tenants.a.pk}", Kind.FLAPPING)].summary
        )
        # Quiet long enough: the window slides past them.
        assert kinds(now + timedelta(minutes=10)) == []

    def test_a_worker_that_stopped_heartbeating_while_owning_sessions_is_dead(
        self, tenants, alerting
    ):
        now = timezone.now()
        session = running_session(tenants.a, state=SessionState.CONNECTED, connected_since=now)
        WorkerProcess.objects.create(
            worker_id="dead-1",
            channel_name="x",
            heartbeat_at=now - timedelta(minutes=5),
            sessions_owned=1,
        )
        WorkerProcess.objects.create(
            worker_id="idle-dead", channel_name="y", heartbeat_at=now - timedelta(minutes=5)
        )
        WorkerProcess.objects.create(
            worker_id="stopped",
            channel_name="z",
            heartbeat_at=now - timedelta(minutes=5),
            stopped_at=now,
        )
        WorkerProcess.objects.create(worker_id="alive", channel_name="w", heartbeat_at=now)
        SessionLease.objects.create(
            session=session, owner="dead-1", epoch=1, expires_at=now - timedelta(minutes=4)
        )
        assert kinds(now) == [("worker:dead-1", Kind.WORKER_DEAD)]

        run_alert_checks(now)
        incident = Incident.objects.get()
        assert incident.worker_id == "dead-1" and incident.company is None
        assert "owning 1 session" in incident.summary

        # Another worker takes the session over: resolved.
        SessionLease.objects.filter(session=session).update(owner="alive", epoch=2)
        assert run_alert_checks(now + timedelta(minutes=1)).resolved == [incident.pk]
        assert len(mail.outbox) == 2

    def test_a_worker_found_dead_by_another_is_an_incident_for_a_while(self, tenants, alerting):
        """Its sessions were freed at once (no stale heartbeat, no leases left),
        but a crashed worker process must still reach an operator."""
        session = running_session(tenants.a, state=SessionState.CONNECTED)
        dead = local_processes.ProcessIdentity(local_processes.host_key(), 2**22 + 1, 1)
        WorkerProcess.objects.create(
            worker_id="crashed",
            channel_name="x",
            hostname="box-1",
            pid=dead.pid,
            host_key=dead.host_key,
            process_start=dead.start,
        )
        SessionLease.objects.create(
            session=session,
            owner="crashed",
            epoch=1,
            expires_at=timezone.now() + timedelta(seconds=15),
        )
        assert leases.free_dead_worker("crashed", dead, found_by="survivor") == 1
        now = timezone.now()

        run_alert_checks(now)
        incident = Incident.objects.get()
        assert (incident.kind, incident.worker_id) == (Kind.WORKER_DEAD, "crashed")
        assert f"process {dead.pid} on box-1 gone" in incident.summary
        assert "seen by survivor" in incident.details
        assert len(mail.outbox) == 1

        assert run_alert_checks(now + timedelta(minutes=16)).resolved == [incident.pk]
        assert len(mail.outbox) == 2


@pytest.mark.django_db
class TestAdminAndSchedule:
    def test_incidents_are_listed_read_only_and_filtered_open_or_resolved(
        self, client, tenants, alerting
    ):
        now = timezone.now()
        Incident.objects.create(subject="company:1", kind=Kind.CONFLICT, summary="still open")
        Incident.objects.create(
            subject="company:2", kind=Kind.BANNED, summary="long over", resolved_at=now
        )
        client.force_login(tenants.superuser)
        url = reverse("admin:whatsapp_incident_changelist")
        page = client.get(url, {"open": "yes"}, secure=True).content.decode()
        assert "still open" in page and "long over" not in page
        page = client.get(url, {"open": "no"}, secure=True).content.decode()
        assert "long over" in page and "still open" not in page
        assert client.get(reverse("admin:whatsapp_incident_add"), secure=True).status_code == 403
        incident = Incident.objects.get(summary="still open")
        response = client.post(
            reverse("admin:whatsapp_incident_change", args=[incident.pk]),
            {"summary": "edited"},
            secure=True,
        )
        assert response.status_code == 403
        incident.refresh_from_db()
        assert incident.summary == "still open"

    def test_setup_defaults_schedules_the_check_every_minute(self, db):
        call_command("setup_defaults", stdout=io.StringIO())
        call_command("setup_defaults", stdout=io.StringIO())
        check = Schedule.objects.get(func="whatsapp.tasks.check_alerts")
        assert (check.schedule_type, check.minutes, check.repeats) == (Schedule.MINUTES, 1, -1)
        assert Schedule.objects.filter(func="whatsapp.tasks.dispatch_webhooks").count() == 1

    def test_the_scheduled_task_runs_the_checks(self, tenants, alerting):
        from whatsapp.tasks import check_alerts

        running_session(tenants.a, state=SessionState.REPLACED)
        assert check_alerts().startswith("opened 1, resolved 0, alerts sent 1")
        assert Incident.objects.filter(kind=Kind.CONFLICT, company=tenants.a).exists()
