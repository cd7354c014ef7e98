"""Admin registration. The connection-health pages build on these."""

from django.contrib import admin

from .admin_pages.sessions import WhatsAppSessionAdmin
from .admin_pages.tenancy import CompanyScopedAdmin
from .models import (
    AutoReplyRule,
    ConnectionEvent,
    InboundMessage,
    OutboundMessage,
    ProcessingJob,
    SessionLease,
    WhatsAppSession,
    WorkerProcess,
)

# Session list, session page, actions and the live/polling endpoints: admin_pages/.
admin.site.register(WhatsAppSession, WhatsAppSessionAdmin)


@admin.register(SessionLease)
class SessionLeaseAdmin(CompanyScopedAdmin):
    company_field = "session__company"
    list_display = ["session", "owner", "epoch", "expires_at", "heartbeat_at"]
    readonly_fields = ["session", "owner", "epoch", "expires_at", "heartbeat_at", "acquired_at"]


@admin.register(ConnectionEvent)
class ConnectionEventAdmin(CompanyScopedAdmin):
    company_field = "session__company"
    list_display = ["created_at", "session", "kind", "reason", "state", "worker_id"]
    list_filter = ["kind"]
    search_fields = ["session__company__name", "reason"]


@admin.register(InboundMessage)
class InboundMessageAdmin(CompanyScopedAdmin):
    list_display = ["received_at", "company", "sender_phone", "push_name", "kind", "text",
                    "redeliveries"]
    list_filter = ["kind", "is_group"]
    search_fields = ["wa_message_id", "sender_phone", "push_name", "text"]


@admin.register(ProcessingJob)
class ProcessingJobAdmin(CompanyScopedAdmin):
    company_field = "message__company"
    list_display = ["message", "status", "attempts", "enqueue_count", "created_at",
                    "finished_at"]
    list_filter = ["status"]


@admin.register(OutboundMessage)
class OutboundMessageAdmin(CompanyScopedAdmin):
    list_display = ["created_at", "company", "to_phone", "status", "attempts", "sent_at"]
    list_filter = ["status"]
    search_fields = ["to_phone", "to_jid", "idempotency_key", "wa_message_id"]


@admin.register(AutoReplyRule)
class AutoReplyRuleAdmin(CompanyScopedAdmin):
    list_display = ["company", "priority", "match", "keyword", "is_active", "reply_in_groups"]
    list_filter = ["match", "is_active"]
    search_fields = ["company__name", "keyword", "reply_text"]


@admin.register(WorkerProcess)
class WorkerProcessAdmin(admin.ModelAdmin):
    list_display = ["worker_id", "hostname", "pid", "started_at", "heartbeat_at", "stopped_at",
                    "sessions_owned", "loop_lag_ms", "stop_reason"]


# Webhook endpoints and deliveries (replay), alert incidents.
from . import admin_webhooks  # noqa: E402,F401
