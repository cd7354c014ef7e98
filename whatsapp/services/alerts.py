"""Alerts on connection problems: find them, open/resolve incidents, notify once.

`run_alert_checks` (scheduled every minute by setup_defaults) compares what
is wrong now with the open incidents:

* a problem without an open incident opens one (INSERT guarded by the partial
  unique constraint: with concurrent runs exactly one INSERT wins);
* an open incident whose problem is gone is resolved (one conditional UPDATE);
* notifications are claimed per incident with a conditional UPDATE of
  `alert_sent_at` / `recovery_sent_at`, so each goes out once. When every
  channel failed the claim is released and the next run tries again.

Problems: a session that wants to run but has not been connected for
WHATSAPP["DOWN_THRESHOLD_MINUTES"]; flapping (WHATSAPP["FLAP_RECONNECTS"]
reconnections within WHATSAPP["FLAP_WINDOW_MINUTES"], the same definition as
the health dashboard); a 440 conflict (replaced), logged out or banned
session; a worker whose heartbeat is older than
WHATSAPP_ALERTS["WORKER_STALE_SECONDS"] while it still owns leases, or that
another worker found dead (its process gone) within the last
WHATSAPP_ALERTS["WORKER_DIED_MINUTES"]: its sessions were taken over at once,
but a crashed worker is worth knowing about.
"""

import logging
from dataclasses import dataclass, field
from datetime import timedelta

import requests
from django.conf import settings
from django.core.mail import mail_admins
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.module_loading import import_string

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
from whatsapp.models.alerts import MANUAL_KINDS, NOT_SENT_ANYWHERE

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    subject: str
    kind: str
    summary: str
    details: str = ""
    company_id: int | None = None
    worker_id: str = ""

    @property
    def key(self):
        return (self.subject, self.kind)


@dataclass
class CheckReport:
    opened: list = field(default_factory=list)
    resolved: list = field(default_factory=list)
    alerts_sent: int = 0
    recoveries_sent: int = 0

    def summary(self):
        return (
            f"opened {len(self.opened)}, resolved {len(self.resolved)}, "
            f"alerts sent {self.alerts_sent}, recoveries sent {self.recoveries_sent}"
        )


def _minutes(delta):
    return int(delta.total_seconds() // 60)


def session_findings(now):
    conf = settings.WHATSAPP
    grace = timedelta(minutes=conf["DOWN_THRESHOLD_MINUTES"])
    window = conf["FLAP_WINDOW_MINUTES"]
    sessions = (
        WhatsAppSession.objects.select_related("company")
        .filter(desired_state=DesiredState.RUNNING, company__is_active=True)
        .annotate(
            flaps=Count(
                "events",
                filter=Q(
                    events__kind=ConnectionEvent.Kind.RECONNECTED,
                    events__created_at__gte=now - timedelta(minutes=window),
                ),
            )
        )
    )
    found = []
    for s in sessions:
        name = s.company.name
        subject = f"company:{s.company_id}"

        def add(kind, summary, s=s, subject=subject):
            details = (
                f"company: {s.company.name} (id {s.company_id})\nstate: {s.state} since "
                f"{s.state_changed_at:%Y-%m-%d %H:%M:%S} UTC\nlast error: {s.last_error or '-'}"
            )
            found.append(Finding(subject, kind, summary, details, company_id=s.company_id))

        if s.state == SessionState.REPLACED:
            add(IncidentKind.CONFLICT, f"{name}: another client took over the session (440)")
        elif s.state == SessionState.LOGGED_OUT:
            add(IncidentKind.LOGGED_OUT, f"{name}: WhatsApp logged the device out; pair again")
        elif s.state == SessionState.BANNED and s.is_parked(now):
            until = f" until {s.ban_expires_at:%Y-%m-%d %H:%M} UTC" if s.ban_expires_at else ""
            add(IncidentKind.BANNED, f"{name}: temporarily banned by WhatsApp{until}")
        elif s.state != SessionState.CONNECTED and s.down_for(now) > grace:
            add(
                IncidentKind.CONNECTION_LOST,
                f"{name}: not connected for {_minutes(s.down_for(now))} min (state {s.state})",
            )
        if s.flaps >= conf["FLAP_RECONNECTS"]:
            add(IncidentKind.FLAPPING, f"{name}: {s.flaps} reconnections in {window} min")
    return found


def worker_findings(now):
    stale = timedelta(seconds=settings.WHATSAPP_ALERTS["WORKER_STALE_SECONDS"])
    owned = {
        row["owner"]: row["n"]
        for row in SessionLease.objects.exclude(owner="").values("owner").annotate(n=Count("pk"))
    }
    found = []
    for worker in WorkerProcess.objects.filter(
        stopped_at__isnull=True, heartbeat_at__lt=now - stale, worker_id__in=list(owned)
    ):
        silent = _minutes(now - worker.heartbeat_at)
        found.append(
            Finding(
                f"worker:{worker.worker_id}",
                IncidentKind.WORKER_DEAD,
                f"worker {worker.worker_id} silent for {silent} min while owning "
                f"{owned[worker.worker_id]} session(s)",
                f"host {worker.hostname}, pid {worker.pid}, last heartbeat "
                f"{worker.heartbeat_at:%Y-%m-%d %H:%M:%S} UTC",
                worker_id=worker.worker_id,
            )
        )
    window = timedelta(minutes=settings.WHATSAPP_ALERTS.get("WORKER_DIED_MINUTES", 15.0))
    for worker in WorkerProcess.objects.filter(died_at__gt=now - window):
        found.append(
            Finding(
                f"worker:{worker.worker_id}",
                IncidentKind.WORKER_DEAD,
                f"worker {worker.worker_id} found dead at {worker.died_at:%H:%M:%S} UTC "
                f"(process {worker.pid} on {worker.hostname} gone); its leases were freed "
                "for the other workers",
                worker.stop_reason,
                worker_id=worker.worker_id,
            )
        )
    return found


def extra_findings(now):
    """Findings of the sources in WHATSAPP_ALERTS["FINDING_SOURCES"] (other apps)."""
    found = []
    for path in settings.WHATSAPP_ALERTS.get("FINDING_SOURCES", ()):
        found.extend(import_string(path)(now))
    return found


def find_problems(now=None):
    now = now or timezone.now()
    found = session_findings(now) + worker_findings(now) + extra_findings(now)
    return {f.key: f for f in found}


def run_alert_checks(now=None, notify=True):
    """Open incidents for new problems, resolve the ones that are gone, notify."""
    now = now or timezone.now()
    findings = find_problems(now)
    report = CheckReport()
    for finding in findings.values():
        try:
            with transaction.atomic():
                incident = Incident.objects.create(
                    subject=finding.subject,
                    kind=finding.kind,
                    company_id=finding.company_id,
                    worker_id=finding.worker_id,
                    summary=finding.summary[:300],
                    details=finding.details,
                    opened_at=now,
                    last_seen_at=now,
                )
            report.opened.append(incident.pk)
        except IntegrityError:  # already open: the incident goes on
            Incident.objects.filter(
                subject=finding.subject, kind=finding.kind, resolved_at__isnull=True
            ).update(last_seen_at=now, summary=finding.summary[:300], details=finding.details)
    # Only incidents opened up to this run's moment: one a concurrent, later run just
    # opened is not this run's to judge.
    open_now = Incident.objects.filter(resolved_at__isnull=True, opened_at__lte=now).exclude(
        kind__in=MANUAL_KINDS
    )
    for pk, subject, kind in open_now.values_list("pk", "subject", "kind"):
        if (subject, kind) in findings:
            continue
        if Incident.objects.filter(pk=pk, resolved_at__isnull=True).update(resolved_at=now):
            report.resolved.append(pk)
    if notify:
        report.alerts_sent, report.recoveries_sent = send_pending_notifications(now)
    return report


# --- notifications -----------------------------------------------------------
def notify_operators(subject, text):
    """Mail to ADMINS and the optional chat webhook. Returns (channels tried, errors)."""
    tried, errors = 0, []
    if settings.ADMINS:
        tried += 1
        try:
            mail_admins(subject, text, fail_silently=False)
        except Exception as exc:
            errors.append(f"mail: {type(exc).__name__}: {exc}")
    url = settings.WHATSAPP_ALERTS["CHAT_WEBHOOK_URL"]
    if url:
        tried += 1
        try:
            response = requests.post(
                url,
                json={"text": f"*{subject}*\n{text}"},
                timeout=settings.WHATSAPP_ALERTS["CHAT_TIMEOUT"],
            )
            response.raise_for_status()
        except requests.RequestException as exc:
            errors.append(f"chat webhook: {type(exc).__name__}: {exc}")
    if not tried:
        logger.warning("alert not sent anywhere (no ADMINS, no chat webhook): %s", subject)
    return tried, errors


def _send_once(pk, field_name, subject, text, now):
    """Claim the notice (field null -> now), send it; release the claim if all failed."""
    if not Incident.objects.filter(pk=pk, **{f"{field_name}__isnull": True}).update(
        **{field_name: now}
    ):
        return False
    tried, errors = notify_operators(subject, text)
    if not tried:  # recorded as such: the admin must not call this "sent"
        Incident.objects.filter(pk=pk).update(notify_error=NOT_SENT_ANYWHERE)
        return False
    if errors and len(errors) == tried:
        Incident.objects.filter(pk=pk).update(**{field_name: None}, notify_error="; ".join(errors))
        logger.error("alert %s for incident %s failed: %s", field_name, pk, errors)
        return False
    Incident.objects.filter(pk=pk).update(notify_error="; ".join(errors))
    return True


def send_pending_notifications(now=None):
    """Send alerts of incidents not yet announced, then recoveries. Returns the counts."""
    now = now or timezone.now()
    alerts = recoveries = 0
    for incident in Incident.objects.filter(alert_sent_at__isnull=True).order_by("opened_at"):
        body = f"{incident.summary}\n\n{incident.details}\n\nopened {incident.opened_at:%c} UTC"
        alerts += _send_once(incident.pk, "alert_sent_at", incident.alert_text(), body, now)
    resolved = Incident.objects.filter(
        resolved_at__isnull=False, recovery_sent_at__isnull=True, alert_sent_at__isnull=False
    ).order_by("resolved_at")
    for incident in resolved:
        text = incident.recovery_text()
        body = f"{text}\n\nopened {incident.opened_at:%c} UTC, resolved {incident.resolved_at:%c}"
        recoveries += _send_once(incident.pk, "recovery_sent_at", text, body, now)
    return alerts, recoveries
