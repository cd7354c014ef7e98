"""The WhatsApp session of a company: desired state, current state, health.

Health is stored on the row and written with `.filter(pk=...).update(...)` /
F() expressions by the services; the admin and the API read rows, never the
worker. Models compute (status, backoff, lease checks); they never act.
"""

import random
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.db.models import Case, Count, F, IntegerField, Q, Value, When
from django.utils import timezone


class SessionState(models.TextChoices):
    STOPPED = "stopped", "Stopped"
    STARTING = "starting", "Starting"
    AWAITING_PAIRING = "awaiting_pairing", "Awaiting QR / pairing code"
    CONNECTED = "connected", "Connected"
    RECONNECTING = "reconnecting", "Reconnecting"
    REPLACED = "replaced", "Taken over by another device"
    LOGGED_OUT = "logged_out", "Logged out"
    BANNED = "banned", "Temporarily banned"
    FAILED = "failed", "Failed"


# States in which the session has a live (or starting) client in some worker.
LIVE_STATES = {
    SessionState.STARTING,
    SessionState.AWAITING_PAIRING,
    SessionState.CONNECTED,
    SessionState.RECONNECTING,
}
# States the worker will not leave by itself: a person (or the ban expiry) must act.
PARKED_STATES = {SessionState.REPLACED, SessionState.LOGGED_OUT, SessionState.BANNED}


class DesiredState(models.TextChoices):
    RUNNING = "running", "Running"
    STOPPED = "stopped", "Stopped"


# Health ranks (worst is highest), computed in SQL for sorting and in Python by health().
HEALTH_RANK = {"idle": 0, "ok": 1, "warning": 2, "error": 3}
WAITING_STATES = {SessionState.STARTING, SessionState.AWAITING_PAIRING, SessionState.RECONNECTING}


class WhatsAppSessionQuerySet(models.QuerySet):
    def visible_to(self, user):
        """Sessions of the companies `user` may see (all for superusers)."""
        from companies.models import Company

        return self.filter(company__in=Company.objects.visible_to(user))

    def with_health(self, now=None, silence_seconds=None):
        """Annotate reconnection counts (last hour, last 24 h, the flapping window)
        and `health_rank` in one query: no per-row queries in lists.

        A reconnection is a `reconnected` ConnectionEvent: the same thing
        `reconnect_count` counts in total."""
        now = now or timezone.now()
        conf = settings.WHATSAPP
        if silence_seconds is None:
            silence_seconds = conf["WATCHDOG_SILENCE"]
        flap_window = timedelta(minutes=conf["FLAP_WINDOW_MINUTES"])

        def reconnects_since(moment):
            return Count(
                "events",
                filter=Q(events__kind="reconnected", events__created_at__gte=moment),
            )

        return self.annotate(
            reconnects_1h=reconnects_since(now - timedelta(hours=1)),
            reconnects_24h=reconnects_since(now - timedelta(hours=24)),
            reconnects_flap_window=reconnects_since(now - flap_window),
            health_rank=Case(
                When(desired_state=DesiredState.STOPPED, then=Value(HEALTH_RANK["idle"])),
                When(
                    Q(state=SessionState.CONNECTED)
                    & (
                        Q(last_event_at__isnull=True)
                        | Q(last_event_at__gte=now - timedelta(seconds=silence_seconds))
                    ),
                    then=Value(HEALTH_RANK["ok"]),
                ),
                When(
                    state__in=[SessionState.CONNECTED, *WAITING_STATES],
                    then=Value(HEALTH_RANK["warning"]),
                ),
                default=Value(HEALTH_RANK["error"]),
                output_field=IntegerField(),
            ),
        )

    def worst_first(self):
        """Needs with_health(): errors first, then flapping, then down longest."""
        return self.order_by(
            "-health_rank",
            "-reconnects_flap_window",
            F("disconnected_since").asc(nulls_last=True),
            "company__name",
        )


class WhatsAppSession(models.Model):
    company = models.OneToOneField(
        "companies.Company", on_delete=models.CASCADE, related_name="whatsapp_session"
    )
    desired_state = models.CharField(
        max_length=16, choices=DesiredState.choices, default=DesiredState.STOPPED
    )
    state = models.CharField(
        max_length=24, choices=SessionState.choices, default=SessionState.STOPPED, db_index=True
    )
    state_changed_at = models.DateTimeField(default=timezone.now)

    # Paired identity (persisted so a restarted worker resumes without pairing).
    jid = models.CharField(max_length=128, blank=True)
    phone = models.CharField(max_length=32, blank=True)
    push_name = models.CharField(max_length=200, blank=True)

    # Pairing material, rendered by the admin/API.
    qr_code = models.TextField(blank=True)
    qr_updated_at = models.DateTimeField(null=True, blank=True)
    pairing_phone = models.CharField(max_length=32, blank=True)
    pairing_code = models.CharField(max_length=16, blank=True)
    pairing_code_at = models.DateTimeField(null=True, blank=True)

    # Health timestamps.
    connected_since = models.DateTimeField(null=True, blank=True)
    disconnected_since = models.DateTimeField(null=True, blank=True)
    last_event_at = models.DateTimeField(null=True, blank=True)
    ban_expires_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)

    # Operator requests the worker carries out (the database is the truth:
    # a lost channel hint is picked up at the next reconcile).
    restart_requested_at = models.DateTimeField(null=True, blank=True)
    logout_requested_at = models.DateTimeField(null=True, blank=True)
    pairing_requested_at = models.DateTimeField(null=True, blank=True)

    # Retry schedule for our own (re)connect attempts.
    consecutive_failures = models.PositiveIntegerField(default=0)
    next_connect_at = models.DateTimeField(null=True, blank=True)

    # Counters (only ever incremented with F()).
    reconnect_count = models.PositiveIntegerField(default=0)
    conflict_count = models.PositiveIntegerField(default=0)
    connect_failure_count = models.PositiveIntegerField(default=0)
    messages_in = models.PositiveBigIntegerField(default=0)
    messages_out = models.PositiveBigIntegerField(default=0)
    duplicates_blocked = models.PositiveBigIntegerField(default=0)
    # Delivered events that are no client message (channel posts, pins, votes,
    # reactions, own messages...): not stored, counted here.
    events_ignored = models.PositiveBigIntegerField(default=0)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = WhatsAppSessionQuerySet.as_manager()

    class Meta:
        verbose_name = "WhatsApp session"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(desired_state__in=DesiredState.values),
                name="session_desired_state_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(state__in=SessionState.values), name="session_state_valid"
            ),
        ]

    def __str__(self):
        return f"{self.company}: {self.get_state_display().lower()}"

    # --- calculations --------------------------------------------------
    @property
    def is_paired(self):
        return bool(self.jid)

    @property
    def wants_running(self):
        return self.desired_state == DesiredState.RUNNING

    def is_parked(self, now=None):
        """Parked sessions are not (re)connected by the worker on its own."""
        now = now or timezone.now()
        if self.state == SessionState.BANNED:
            return self.ban_expires_at is None or self.ban_expires_at > now
        return self.state in PARKED_STATES

    def should_connect(self, now=None):
        """Whether an owning worker should have a live client for this session."""
        now = now or timezone.now()
        if not self.wants_running or not self.company.is_active or self.is_parked(now):
            return False
        return True

    def connect_due(self, now=None):
        now = now or timezone.now()
        return self.next_connect_at is None or self.next_connect_at <= now

    def is_events_silent(self, silence_seconds, now=None):
        """Connected but no event for too long: the 'socket open, nothing flowing' trap."""
        if self.state != SessionState.CONNECTED or self.last_event_at is None:
            return False
        now = now or timezone.now()
        return (now - self.last_event_at).total_seconds() > silence_seconds

    def down_for(self, now=None):
        """How long the session has wanted to run without being connected."""
        if not self.wants_running or self.state == SessionState.CONNECTED:
            return timedelta(0)
        now = now or timezone.now()
        return now - (self.disconnected_since or self.state_changed_at)

    def health(self, silence_seconds=180, now=None):
        """One word for dashboards: ok, warning, error or idle."""
        now = now or timezone.now()
        if not self.wants_running:
            return "idle"
        if self.state == SessionState.CONNECTED:
            return "warning" if self.is_events_silent(silence_seconds, now) else "ok"
        if self.state in WAITING_STATES:
            return "warning"
        return "error"

    @property
    def down_since(self):
        """Since when a session that wants to run has not been connected, or None."""
        if not self.wants_running or self.state == SessionState.CONNECTED:
            return None
        return self.disconnected_since or self.state_changed_at

    def is_flapping(self, reconnects=None):
        """Too many reconnections within the flapping window (needs with_health())."""
        if reconnects is None:
            reconnects = settings.WHATSAPP["FLAP_RECONNECTS"]
        return getattr(self, "reconnects_flap_window", 0) >= reconnects

    def is_down_too_long(self, minutes=None, now=None):
        if minutes is None:
            minutes = settings.WHATSAPP["DOWN_THRESHOLD_MINUTES"]
        return self.down_for(now) > timedelta(minutes=minutes)

    def live_snapshot(self):
        """What the admin pages compare between polls (JSON-ready). Reads
        `last_event_id` when annotated and the lease when selected."""
        lease = getattr(self, "lease", None)
        return {
            "company_id": self.company_id,
            "state": self.state,
            "desired_state": self.desired_state,
            "state_changed_at": self.state_changed_at,
            "qr_updated_at": self.qr_updated_at,
            "pairing_code_at": self.pairing_code_at,
            "last_error_at": self.last_error_at,
            "last_event_id": getattr(self, "last_event_id", None),
            "last_inbound_id": getattr(self, "last_inbound_id", None),
            "last_outbound_change": getattr(self, "last_outbound_change", None),
            "last_job_change": getattr(self, "last_job_change", None),
            "pending": self.pending(),
            "reconnect_count": self.reconnect_count,
            "conflict_count": self.conflict_count,
            "connect_failure_count": self.connect_failure_count,
            "messages_in": self.messages_in,
            "messages_out": self.messages_out,
            "duplicates_blocked": self.duplicates_blocked,
            "worker": lease.owner if lease is not None else "",
        }

    @property
    def last_error_words(self):
        """The last error in plain words, the raw text kept (models/error_words.py)."""
        from .error_words import describe_error

        return describe_error(self.last_error)

    @property
    def error_is_resolved(self):
        """The last error came before the current connection: history, not a problem."""
        return bool(
            self.last_error
            and self.state == SessionState.CONNECTED
            and self.connected_since
            and self.last_error_at
            and self.last_error_at <= self.connected_since
        )

    def pending(self):
        """What the operator asked for that the worker has not confirmed yet, as
        words for the page ("Stopping…"), or "" when the state is what was asked."""
        if self.logout_requested_at:
            return "Logging out…"
        if self.restart_requested_at:
            return "Restarting…"
        if self.desired_state == DesiredState.STOPPED and self.state in LIVE_STATES:
            return "Stopping…"
        if self.wants_running and self.state == SessionState.STOPPED:
            return "Starting…"
        if self.pairing_requested_at and not self.pairing_code:
            return "Requesting a pairing code…"
        return ""

    def available_actions(self):
        """The operator actions that make sense now, in page order: Start only
        when it would change something, Stop/Restart only while it should run,
        Log out only for a paired device not already being logged out."""
        actions = []
        if not self.wants_running or self.state in {
            SessionState.LOGGED_OUT,
            SessionState.REPLACED,
        }:
            actions.append("start")
        if self.wants_running:
            actions += ["stop", "restart"]
        if self.is_paired and not self.logout_requested_at:
            actions.append("logout")
        return actions

    def problems(self, now=None):
        """Short reasons for a dashboard, worst first (needs with_health())."""
        found = []
        if self.state == SessionState.REPLACED:
            found.append("taken over by another device")
        if self.state == SessionState.LOGGED_OUT:
            found.append("logged out: pair again")
        if self.state == SessionState.BANNED:
            found.append("temporarily banned")
        if self.is_flapping():
            found.append(f"flapping: {self.reconnects_flap_window} reconnections in "
                         f"{settings.WHATSAPP['FLAP_WINDOW_MINUTES']} min")
        if self.is_down_too_long(now=now):
            minutes = int(self.down_for(now).total_seconds() // 60)
            found.append(f"down for {minutes} min")
        if self.is_events_silent(settings.WHATSAPP["WATCHDOG_SILENCE"], now):
            found.append("connected but no events")
        return found


def backoff_delay(failures, base, cap, rng=random):
    """Exponential backoff with full jitter (AWS architecture blog): the delay
    before attempt `failures + 1` is uniform in [0, min(cap, base * 2**failures)].

    Full jitter spreads the retries of many sessions that failed together
    (after an outage) instead of synchronising them into a reconnect storm."""
    ceiling = min(cap, base * (2 ** min(failures, 30)))
    return rng.uniform(0, ceiling)


class SessionLease(models.Model):
    """Ownership of a company's live client across worker processes.

    A worker may connect a company only while it holds the unexpired lease.
    `epoch` increases on every takeover, so a worker that was paused past its
    expiry can tell it lost the lease even if it happens to be re-granted."""

    session = models.OneToOneField(WhatsAppSession, on_delete=models.CASCADE, related_name="lease")
    owner = models.CharField(max_length=64, blank=True, db_index=True)
    epoch = models.PositiveBigIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    acquired_at = models.DateTimeField(null=True, blank=True)

    def __str__(self):
        return f"lease {self.session_id} -> {self.owner or '-'} (epoch {self.epoch})"

    def is_held(self, now=None):
        now = now or timezone.now()
        return bool(self.owner) and self.expires_at is not None and self.expires_at > now

    def is_held_by(self, worker_id, now=None):
        return self.owner == worker_id and self.is_held(now)


class ConnectionEvent(models.Model):
    """History of a session's connection: every transition and notable event."""

    class Kind(models.TextChoices):
        STARTING = "starting", "Starting"
        CONNECTED = "connected", "Connected"
        DISCONNECTED = "disconnected", "Connection dropped"
        RECONNECTED = "reconnected", "Reconnected"
        CONNECT_FAILED = "connect_failed", "Could not connect"
        REPLACED = "replaced", "Taken over by another device"
        LOGGED_OUT = "logged_out", "Logged out"
        BANNED = "banned", "Temporary ban"
        QR = "qr", "QR code issued"
        PAIRING_CODE = "pairing_code", "Pairing code issued"
        PAIRED = "paired", "Paired"
        KEEPALIVE_TIMEOUT = "keepalive_timeout", "WhatsApp stopped answering"
        KEEPALIVE_RESTORED = "keepalive_restored", "WhatsApp answers again"
        SILENT = "silent", "No activity (restarted)"
        STOPPED = "stopped", "Stopped"
        LEASE_ACQUIRED = "lease_acquired", "Worker took charge"
        LEASE_LOST = "lease_lost", "Worker lost charge"
        ERROR = "error", "Error"

    session = models.ForeignKey(WhatsAppSession, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=24, choices=Kind.choices)
    reason = models.CharField(max_length=500, blank=True)
    state = models.CharField(max_length=24, choices=SessionState.choices, blank=True)
    worker_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["session", "kind", "created_at"])]

    def __str__(self):
        return self.words.text

    @property
    def words(self):
        """Plain text and technical details (models/event_words.py)."""
        from .event_words import describe_event

        return describe_event(self.kind, self.reason, self.worker_id)
