"""Admin registration. The connection-health pages build on these."""

from django.contrib import admin

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


@admin.register(WhatsAppSession)
class WhatsAppSessionAdmin(admin.ModelAdmin):
    list_display = ["company", "state", "desired_state", "phone", "connected_since",
                    "reconnect_count", "conflict_count", "connect_failure_count",
                    "messages_in", "messages_out", "duplicates_blocked", "last_error_at"]
    list_filter = ["state", "desired_state"]
    search_fields = ["company__name", "phone", "jid"]
    readonly_fields = [f.name for f in WhatsAppSession._meta.fields if f.name not in {
        "company", "desired_state"}]


@admin.register(SessionLease)
class SessionLeaseAdmin(admin.ModelAdmin):
    list_display = ["session", "owner", "epoch", "expires_at", "heartbeat_at"]
    readonly_fields = ["session", "owner", "epoch", "expires_at", "heartbeat_at", "acquired_at"]


@admin.register(ConnectionEvent)
class ConnectionEventAdmin(admin.ModelAdmin):
    list_display = ["created_at", "session", "kind", "reason", "state", "worker_id"]
    list_filter = ["kind"]
    search_fields = ["session__company__name", "reason"]


@admin.register(InboundMessage)
class InboundMessageAdmin(admin.ModelAdmin):
    list_display = ["received_at", "company", "sender_phone", "push_name", "kind", "text",
                    "redeliveries"]
    list_filter = ["kind", "is_group"]
    search_fields = ["wa_message_id", "sender_phone", "push_name", "text"]


@admin.register(ProcessingJob)
class ProcessingJobAdmin(admin.ModelAdmin):
    list_display = ["message", "status", "attempts", "enqueue_count", "created_at",
                    "finished_at"]
    list_filter = ["status"]


@admin.register(OutboundMessage)
class OutboundMessageAdmin(admin.ModelAdmin):
    list_display = ["created_at", "company", "to_phone", "status", "attempts", "sent_at"]
    list_filter = ["status"]
    search_fields = ["to_phone", "to_jid", "idempotency_key", "wa_message_id"]


@admin.register(AutoReplyRule)
class AutoReplyRuleAdmin(admin.ModelAdmin):
    list_display = ["company", "priority", "match", "keyword", "is_active", "reply_in_groups"]
    list_filter = ["match", "is_active"]
    search_fields = ["company__name", "keyword", "reply_text"]


@admin.register(WorkerProcess)
class WorkerProcessAdmin(admin.ModelAdmin):
    list_display = ["worker_id", "hostname", "pid", "started_at", "heartbeat_at", "stopped_at",
                    "sessions_owned"]
