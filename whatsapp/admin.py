"""Admin registration. The connection-health pages build on these."""

from axes import admin as axes_admin  # registers axes' admins now (wrapped below)
from axes import models as axes_models
from django.contrib import admin, messages
from django.utils.html import format_html
from django_q import admin as q_admin
from django_q import models as q_models

from companies.admin_tenancy import TenantScopedAdmin
from companies.admin_times import CompanyTimesAdmin

from .admin_pages.chats import ChatAdmin, ContactAdmin
from .admin_pages.sessions import WhatsAppSessionAdmin
from .models import (
    AutoReplyRule,
    Chat,
    ConnectionEvent,
    Contact,
    InboundMessage,
    MediaFile,
    MessageMedia,
    OutboundMessage,
    ProcessingJob,
    SessionLease,
    Turn,
    WhatsAppSession,
    WorkerProcess,
)
from .models.workers import describe_worker
from .services.jobs import retry_processing_job

# Session list, session page, actions and the live/polling endpoints: admin_pages/.
admin.site.register(WhatsAppSession, WhatsAppSessionAdmin)
# Contacts, and chats as threads (admin_pages/chats.py; docs/conversations.md).
admin.site.register(Contact, ContactAdmin)
admin.site.register(Chat, ChatAdmin)


class SystemRecordAdmin(CompanyTimesAdmin):
    """Rows the system writes (workers, the inbound path, the job stage): read
    only for everyone, superusers included. Editing a job's status or a lease's
    epoch by hand would make the record lie; what a person may do to them is an
    explicit action (a retry, a replay) that goes through a service."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(SessionLease)
class SessionLeaseAdmin(SystemRecordAdmin):
    company_field = "session__company"
    list_display = ["session", "worker", "expires_at", "heartbeat_at"]

    @admin.display(description="Worker in charge", ordering="owner")
    def worker(self, obj):
        process = WorkerProcess.objects.filter(worker_id=obj.owner).first() if obj.owner else None
        return worker_html(describe_worker(obj.owner, process), f"lease epoch {obj.epoch}")


def worker_html(words, more=""):
    """A worker in words, its id (and `more`) behind the technical-details toggle."""
    if not words.details:
        return words.text
    return format_html(
        '{} <details class="wa-tech"><summary>technical details</summary><code>{}</code>'
        "</details>",
        words.text,
        "; ".join(part for part in [words.details, more] if part),
    )


@admin.register(ConnectionEvent)
class ConnectionEventAdmin(SystemRecordAdmin):
    company_field = "session__company"
    list_display = ["created_at", "session", "what_happened", "state", "details"]

    @admin.display(description="What happened", ordering="kind")
    def what_happened(self, obj):
        return obj.words.text

    @admin.display(description="Technical details")
    def details(self, obj):
        if not obj.words.details:
            return ""
        return format_html(
            '<details class="wa-tech"><summary>technical details</summary><code>{}</code>'
            "</details>",
            obj.words.details,
        )
    list_filter = ["kind"]
    search_fields = ["session__company__name", "reason"]


@admin.register(InboundMessage)
class InboundMessageAdmin(SystemRecordAdmin):
    list_display = ["received_at", "company", "sender_phone", "push_name", "kind", "text",
                    "redeliveries"]
    list_filter = ["kind", "is_group"]
    search_fields = ["wa_message_id", "sender_phone", "push_name", "text"]


@admin.register(ProcessingJob)
class ProcessingJobAdmin(SystemRecordAdmin):
    company_field = "message__company"
    actions = ["retry_failed_jobs"]

    def has_retry_permission(self, request):
        """Retrying acts on a company: its owners and admins (the rows of other
        companies are left out by the scoped bulk action)."""
        return request.user.is_superuser or self.writable_companies(request).exists()

    @admin.action(description="Retry selected failed jobs", permissions=["retry"])
    def retry_failed_jobs(self, request, queryset):
        retried = sum(
            retry_processing_job(pk) for pk in queryset.values_list("pk", flat=True)
        )
        self.message_user(request, f"{retried} failed job(s) queued again.", messages.SUCCESS)
        left = queryset.count() - retried
        if left:
            self.message_user(
                request, f"{left} selected job(s) had not failed; left as they are.",
                messages.WARNING,
            )
    list_display = ["message_words", "status", "attempts", "created_at", "finished_at"]
    list_filter = ["status"]
    list_select_related = ["message"]

    @admin.display(description="Message", ordering="message__received_at")
    def message_words(self, obj):
        """The message as a person knows it: its text and sender (the WhatsApp id
        is on the change page)."""
        m = obj.message
        text = m.text if len(m.text) <= 60 else m.text[:59] + "…"
        return format_html(
            "“{}” <small>from {} ({})</small>",
            text or m.get_kind_display(),
            m.sender_phone or m.push_name,
            m.company.name,
        )


@admin.register(Turn)
class TurnAdmin(SystemRecordAdmin):
    """Turns of the assistant pipeline: what was answered, how fast, what was late."""

    list_display = ["created_at", "company", "chat_jid", "status", "message_count", "attempts",
                    "latency", "handler_seconds", "late", "result"]
    list_filter = ["status"]
    search_fields = ["chat_jid", "result"]
    exclude = ["token"]  # the asynchronous reply's secret

    @admin.display(description="Latency (s)")
    def latency(self, obj):
        value = obj.latency_seconds
        return "" if value is None else f"{value:.1f}"

    @admin.display(description="Late", boolean=True)
    def late(self, obj):
        return obj.was_late


@admin.register(OutboundMessage)
class OutboundMessageAdmin(CompanyTimesAdmin):
    list_display = ["created_at", "company", "to_phone", "status", "attempts", "sent_at"]
    list_filter = ["status"]
    search_fields = ["to_phone", "to_jid", "idempotency_key", "wa_message_id"]


@admin.register(MessageMedia)
class MessageMediaAdmin(SystemRecordAdmin):
    """Media of messages with their download state (docs/media.md)."""

    list_display = ["created_at", "company", "kind", "state", "declared_mimetype",
                    "declared_size", "attempts", "error"]
    list_filter = ["kind", "state"]
    exclude = ["descriptor"]


@admin.register(MediaFile)
class MediaFileAdmin(SystemRecordAdmin):
    """Stored files, once per company and content (storage used: the Companies list)."""

    list_display = ["created_at", "company", "mimetype", "size", "sha256", "last_used_at"]
    search_fields = ["sha256"]


@admin.register(AutoReplyRule)
class AutoReplyRuleAdmin(CompanyTimesAdmin):
    list_display = ["company", "priority", "match", "keyword", "is_active", "reply_in_groups"]
    list_filter = ["match", "is_active"]
    search_fields = ["company__name", "keyword", "reply_text"]


@admin.register(WorkerProcess)
class WorkerProcessAdmin(SystemRecordAdmin):
    company_field = None  # workers serve every company: superusers only
    list_display = ["worker", "started_at", "heartbeat_at", "stopped_at", "sessions_owned",
                    "loop_lag_ms", "stop_reason"]
    search_fields = ["worker_id", "hostname"]

    @admin.display(description="Worker", ordering="worker_id")
    def worker(self, obj):
        return worker_html(describe_worker(obj.worker_id, obj))


# django-q2's queue, results and schedules belong to no company (and a schedule runs
# any function with any arguments), nor do django-axes' login attempts: superusers only.
for _model, _admin in [
    (axes_models.AccessAttempt, axes_admin.AccessAttemptAdmin),
    (axes_models.AccessLog, axes_admin.AccessLogAdmin),
    (axes_models.AccessFailureLog, axes_admin.AccessFailureLogAdmin),
    (q_models.Schedule, q_admin.ScheduleAdmin),
    (q_models.Success, q_admin.TaskAdmin),
    (q_models.Failure, q_admin.FailAdmin),
    (q_models.OrmQ, q_admin.QueueAdmin),
]:
    if not admin.site.is_registered(_model):
        continue  # django-q2 lists its ORM queue only with the ORM broker
    admin.site.unregister(_model)
    admin.site.register(
        _model, type(_admin.__name__, (TenantScopedAdmin, _admin), {"company_field": None})
    )

# Webhook endpoints and deliveries (replay), alert incidents.
from . import admin_webhooks  # noqa: E402,F401
