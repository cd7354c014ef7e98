"""`/metrics`: Prometheus text format, computed from the database at scrape time.

Every value is read from rows (session counters, job and delivery tables,
worker heartbeats) by a custom collector, so whichever process answers the
scrape -- any daphne of many -- reports the same numbers; nothing is counted
in process memory. Counters are backed by columns that only ever increase
(session counters, attempt rows); gauges by current row counts.

Set METRICS_TOKEN to require `Authorization: Bearer <token>`. Without a token
the endpoint is refused (403) unless METRICS_PUBLIC is set or DEBUG is on; the
deploy check whatsapp.W004 warns when it is open to anyone.
"""

import hmac
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import HttpResponse
from django.utils.module_loading import import_string
from django.views.decorators.http import require_GET
from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.exposition import choose_encoder

from whatsapp.models import (
    ConnectionEvent,
    Incident,
    IncidentKind,
    MediaFile,
    MessageMedia,
    OutboundMessage,
    ProcessingJob,
    SessionState,
    Turn,
    WebhookAttempt,
    WebhookDelivery,
    WhatsAppSession,
)
from whatsapp.services.leases import live_workers

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
# ConnectionEvent kinds that explain reconnects and outages ("reason" label).
REASON_KINDS = [
    ConnectionEvent.Kind.DISCONNECTED,
    ConnectionEvent.Kind.RECONNECTED,
    ConnectionEvent.Kind.CONNECT_FAILED,
    ConnectionEvent.Kind.REPLACED,
    ConnectionEvent.Kind.LOGGED_OUT,
    ConnectionEvent.Kind.BANNED,
    ConnectionEvent.Kind.KEEPALIVE_TIMEOUT,
    ConnectionEvent.Kind.SILENT,
]


class DatabaseCollector:
    """A prometheus_client collector reading everything from the database."""

    def describe(self):
        return []  # computed at scrape time; nothing to describe up front

    def collect(self):
        yield from self.sessions()
        yield from self.connection_events()
        yield from self.messages()
        yield from self.jobs()
        yield from self.turns()
        yield from self.webhooks()
        yield from self.operations()
        yield from self.media()

    def sessions(self):
        by_state = GaugeMetricFamily(
            "aiadmin_whatsapp_sessions", "WhatsApp sessions by state.", labels=["state"]
        )
        counts = dict(
            WhatsAppSession.objects.values("state")
            .annotate(n=Count("pk"))
            .values_list("state", "n")
        )
        for state in SessionState.values:
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state

        connected = GaugeMetricFamily(
            "aiadmin_whatsapp_session_connected",
            "1 when the company's session is connected, else 0.",
            labels=["company"],
        )
        reconnects = CounterMetricFamily(
            "aiadmin_whatsapp_reconnects",
            "Reconnections of the session (whatsmeow reconnected after a drop).",
            labels=["company"],
        )
        conflicts = CounterMetricFamily(
            "aiadmin_whatsapp_conflicts",
            "440 'conflict: replaced' events: another client took the session.",
            labels=["company"],
        )
        failures = CounterMetricFamily(
            "aiadmin_whatsapp_connect_failures",
            "Failed connect attempts.",
            labels=["company"],
        )
        rows = WhatsAppSession.objects.values_list(
            "company__slug", "state", "reconnect_count", "conflict_count", "connect_failure_count"
        )
        for slug, state, reconnect, conflict, failure in rows:
            connected.add_metric([slug], 1 if state == SessionState.CONNECTED else 0)
            reconnects.add_metric([slug], reconnect)
            conflicts.add_metric([slug], conflict)
            failures.add_metric([slug], failure)
        yield from (connected, reconnects, conflicts, failures)

    def connection_events(self):
        family = CounterMetricFamily(
            "aiadmin_whatsapp_connection_events",
            "Connection events by company and reason (kept ConnectionEvent rows).",
            labels=["company", "reason"],
        )
        rows = (
            ConnectionEvent.objects.filter(kind__in=REASON_KINDS)
            .values("session__company__slug", "kind")
            .annotate(n=Count("pk"))
            .values_list("session__company__slug", "kind", "n")
        )
        for slug, kind, n in rows:
            family.add_metric([slug, kind], n)
        yield family

    def messages(self):
        received = CounterMetricFamily(
            "aiadmin_whatsapp_messages_received",
            "Inbound messages recorded (each once).",
            labels=["company"],
        )
        sent = CounterMetricFamily(
            "aiadmin_whatsapp_messages_sent", "Outbound messages sent.", labels=["company"]
        )
        duplicates = CounterMetricFamily(
            "aiadmin_whatsapp_duplicates_blocked",
            "Redeliveries of an already recorded message, blocked by the unique constraint.",
            labels=["company"],
        )
        ignored = CounterMetricFamily(
            "aiadmin_whatsapp_events_ignored",
            "Delivered events that are no client message (channel posts, pins, poll votes, "
            "reactions, own messages...): not stored.",
            labels=["company"],
        )
        for slug, m_in, m_out, dup, skipped in WhatsAppSession.objects.values_list(
            "company__slug", "messages_in", "messages_out", "duplicates_blocked", "events_ignored"
        ):
            received.add_metric([slug], m_in)
            sent.add_metric([slug], m_out)
            duplicates.add_metric([slug], dup)
            ignored.add_metric([slug], skipped)
        yield from (received, sent, duplicates, ignored)

        outbound = GaugeMetricFamily(
            "aiadmin_whatsapp_outbound_messages",
            "Outbound messages by status.",
            labels=["company", "status"],
        )
        for slug, status, n in (
            OutboundMessage.objects.values("company__slug", "status")
            .annotate(n=Count("pk"))
            .values_list("company__slug", "status", "n")
        ):
            outbound.add_metric([slug, status], n)
        yield outbound

    def jobs(self):
        by_status = GaugeMetricFamily(
            "aiadmin_whatsapp_processing_jobs",
            "Processing jobs by status (failed = failed and not retried).",
            labels=["status"],
        )
        counts = dict(
            ProcessingJob.objects.values("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        )
        for status in ProcessingJob.Status.values:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status

        latency = ExpressionWrapper(
            F("finished_at") - F("message__received_at"), output_field=DurationField()
        )
        finished = ProcessingJob.objects.filter(finished_at__isnull=False).annotate(latency=latency)
        aggregates = {
            f"le{i}": Count("pk", filter=Q(latency__lte=timedelta(seconds=bound)))
            for i, bound in enumerate(LATENCY_BUCKETS)
        }
        result = finished.aggregate(count=Count("pk"), total=Sum("latency"), **aggregates)
        buckets = [(str(float(bound)), result[f"le{i}"]) for i, bound in enumerate(LATENCY_BUCKETS)]
        buckets.append(("+Inf", result["count"]))
        total = result["total"]
        yield HistogramMetricFamily(
            "aiadmin_whatsapp_job_latency_seconds",
            "From message received to job finished, over finished jobs.",
            buckets=buckets,
            sum_value=total.total_seconds() if total else 0.0,
        )

    def turns(self):
        """The assistant pipeline, per company: turns by status, answered in
        time / late / handed over, latency (first message -> first reply
        queued; typing pacing included) and handler time."""
        by_status = GaugeMetricFamily(
            "aiadmin_turns", "Turns by company and status.", labels=["company", "status"]
        )
        for company_id, status, n in (
            Turn.objects.values("company_id", "status")
            .annotate(n=Count("pk"))
            .values_list("company_id", "status", "n")
        ):
            by_status.add_metric([str(company_id), status], n)
        yield by_status
        outcome = CounterMetricFamily(
            "aiadmin_turn_outcomes",
            "Finished turns: answered in time, late (the holding message went out), "
            "handed over to a person.",
            labels=["company", "outcome"],
        )
        rows = Turn.objects.values("company_id").annotate(
            in_time=Count(
                "pk", filter=Q(replied_at__isnull=False, holding_sent_at__isnull=True)
            ),
            late=Count("pk", filter=Q(holding_sent_at__isnull=False)),
            handed_over=Count("pk", filter=Q(status=Turn.Status.HANDED_OVER)),
        )
        for row in rows:
            for name in ("in_time", "late", "handed_over"):
                outcome.add_metric([str(row["company_id"]), name], row[name])
        yield outcome
        yield self._turn_histogram(
            "aiadmin_turn_latency_seconds",
            "From a turn's first message to its first reply queued.",
            Turn.objects.filter(replied_at__isnull=False).annotate(
                value=ExpressionWrapper(
                    F("replied_at") - F("first_message_at"), output_field=DurationField()
                )
            ),
            duration=True,
        )
        yield self._turn_histogram(
            "aiadmin_turn_handler_seconds",
            "Time in the turn handler, per attempt that finished.",
            Turn.objects.filter(handler_seconds__isnull=False).annotate(value=F("handler_seconds")),
            duration=False,
        )

    @staticmethod
    def _turn_histogram(name, documentation, queryset, duration):
        family = HistogramMetricFamily(name, documentation, labels=["company"])

        def bound_of(b):
            return timedelta(seconds=b) if duration else b

        aggregates = {
            f"le{i}": Count("pk", filter=Q(value__lte=bound_of(bound)))
            for i, bound in enumerate(LATENCY_BUCKETS)
        }
        for row in queryset.values("company_id").annotate(
            count=Count("pk"), total=Sum("value"), **aggregates
        ):
            buckets = [
                (str(float(bound)), row[f"le{i}"]) for i, bound in enumerate(LATENCY_BUCKETS)
            ]
            buckets.append(("+Inf", row["count"]))
            total = row["total"] or 0
            if duration and total:
                total = total.total_seconds()
            family.add_metric([str(row["company_id"])], buckets, float(total))
        return family

    def webhooks(self):
        deliveries = GaugeMetricFamily(
            "aiadmin_webhook_deliveries",
            "Webhook deliveries by status (dead = dead-lettered).",
            labels=["status"],
        )
        counts = dict(
            WebhookDelivery.objects.values("status")
            .annotate(n=Count("pk"))
            .values_list("status", "n")
        )
        for status in WebhookDelivery.Status.values:
            deliveries.add_metric([status], counts.get(status, 0))
        yield deliveries

        attempts = CounterMetricFamily(
            "aiadmin_webhook_attempts",
            "Webhook HTTP attempts by outcome.",
            labels=["outcome"],
        )
        outcome = WebhookAttempt.objects.aggregate(
            success=Count("pk", filter=Q(succeeded=True)),
            failure=Count("pk", filter=Q(succeeded=False)),
        )
        attempts.add_metric(["success"], outcome["success"])
        attempts.add_metric(["failure"], outcome["failure"])
        yield attempts

    def operations(self):
        workers = list(live_workers().values_list("worker_id", "sessions_owned", "loop_lag_ms"))
        yield GaugeMetricFamily(
            "aiadmin_whatsapp_workers_live",
            "Session worker processes with a fresh heartbeat.",
            value=len(workers),
        )
        owned = GaugeMetricFamily(
            "aiadmin_whatsapp_worker_sessions",
            "Sessions a live worker owned at its last heartbeat.",
            labels=["worker"],
        )
        lag = GaugeMetricFamily(
            "aiadmin_whatsapp_worker_loop_lag_seconds",
            "Worst event-loop lag of a live worker between its last two heartbeats.",
            labels=["worker"],
        )
        for worker_id, sessions, lag_ms in workers:
            owned.add_metric([worker_id], sessions)
            if lag_ms is not None:
                lag.add_metric([worker_id], lag_ms / 1000)
        yield owned
        yield lag
        incidents = GaugeMetricFamily(
            "aiadmin_incidents_open", "Open alert incidents by kind.", labels=["kind"]
        )
        counts = dict(
            Incident.objects.filter(resolved_at__isnull=True)
            .values("kind")
            .annotate(n=Count("pk"))
            .values_list("kind", "n")
        )
        for kind in IncidentKind.values:
            incidents.add_metric([kind], counts.get(kind, 0))
        yield incidents


    def media(self):
        used = GaugeMetricFamily(
            "aiadmin_media_storage_bytes",
            "Bytes of media files stored per company (each file once per company).",
            labels=["company"],
        )
        files = GaugeMetricFamily(
            "aiadmin_media_files", "Media files stored per company.", labels=["company"]
        )
        for slug, n, total in (
            MediaFile.objects.values("company__slug")
            .annotate(n=Count("pk"), total=Sum("size"))
            .values_list("company__slug", "n", "total")
        ):
            used.add_metric([slug], total or 0)
            files.add_metric([slug], n)
        by_state = GaugeMetricFamily(
            "aiadmin_media", "Media of messages by kind and state.", labels=["kind", "state"]
        )
        for kind, state, n in (
            MessageMedia.objects.values("kind", "state")
            .annotate(n=Count("pk"))
            .values_list("kind", "state", "n")
        ):
            by_state.add_metric([kind, state], n)
        yield from (used, files, by_state)


def render_metrics(accept=""):
    """(body, content type): Prometheus text 0.0.4 by default, OpenMetrics when the
    scraper's Accept header asks for it."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector())
    for path in settings.METRICS_EXTRA_COLLECTORS:
        registry.register(import_string(path)())
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def metrics_open():
    """Whether /metrics answers without a token (never when a token is set)."""
    return not settings.METRICS_TOKEN and (settings.METRICS_PUBLIC or settings.DEBUG)


def _token_matches(request):
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    token = settings.METRICS_TOKEN
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())


@require_GET
def metrics_view(request):
    if not settings.METRICS_TOKEN and not metrics_open():
        return HttpResponse(
            "/metrics is closed: set METRICS_TOKEN (scrape with Authorization: Bearer <token>), "
            "or METRICS_PUBLIC=1 to open it to anyone who can reach it.\n",
            status=403,
            content_type="text/plain",
        )
    if settings.METRICS_TOKEN and not _token_matches(request):
        response = HttpResponse("metrics token required\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = render_metrics(request.headers.get("Accept", ""))
    return HttpResponse(body, content_type=content_type)
