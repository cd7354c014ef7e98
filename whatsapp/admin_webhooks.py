"""Admin for webhook endpoints and deliveries (with replay), and alert incidents.

Imported by whatsapp/admin.py. Actions call services; nothing is decided here.
"""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.utils.html import format_html

from companies.admin_tenancy import TenantScopedInline
from companies.admin_times import CompanyTimesAdmin

from .models import Incident, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from .models.webhooks import mask_secret
from .services.webhook_http import UnsafeWebhookURL, validate_webhook_url
from .services.webhooks import replay_webhook_delivery, rotate_webhook_secret


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")
    events = forms.MultipleChoiceField(
        choices=WebhookEvent.choices,
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None ticked = all events.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["company", "url", "description", "events", "is_active", "is_message_handler"]

    def clean_url(self):
        url = self.cleaned_data["url"]
        try:
            return validate_webhook_url(url)
        except UnsafeWebhookURL as exc:
            raise forms.ValidationError(str(exc)) from None


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(CompanyTimesAdmin):
    form = WebhookEndpointForm
    list_display = [
        "company",
        "url",
        "is_active",
        "is_message_handler",
        "last_attempt_at",
        "last_status_code",
        "last_error",
    ]
    list_filter = ["is_active", "is_message_handler"]
    search_fields = ["company__name", "url", "description"]
    # The secret is shown once, in a message after creating or rotating; pages show
    # only its first characters (a view permission must not reveal it).
    readonly_fields = [
        "masked_secret",
        "previous_secret_until",
        "last_attempt_at",
        "last_status_code",
        "last_error",
        "created_at",
    ]
    actions = ["rotate_secrets"]

    @admin.display(description="secret")
    def masked_secret(self, obj):
        if obj is None or not obj.pk:
            return "generated when saved, shown once"
        return f"{obj.secret_hint} (shown once when created or rotated)"

    @admin.display(description="previous secret")
    def previous_secret_until(self, obj):
        if obj is None or not obj.previous_secret_valid():
            return "-"
        return (
            f"{mask_secret(obj.previous_secret)} also signs until "
            f"{obj.previous_secret_expires_at:%Y-%m-%d %H:%M} UTC"
        )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        if not change:
            self.message_user(
                request,
                f"The signing secret of {obj.url} is {obj.secret} -- store it now: it is "
                "not shown again (the action \"Rotate signing secret\" makes a new one).",
                messages.WARNING,
            )

    @admin.action(
        description="Rotate signing secret (the old one keeps signing for the overlap)",
        permissions=["change"],
    )
    def rotate_secrets(self, request, queryset):
        overlap = settings.WHATSAPP_WEBHOOKS["SECRET_OVERLAP"]
        previous = (
            f"The previous secret keeps signing too for {overlap / 3600:g} h."
            if overlap > 0
            else "The previous secret no longer signs."
        )
        for endpoint in queryset:
            secret = rotate_webhook_secret(endpoint.pk)
            self.message_user(
                request,
                f"New signing secret of {endpoint.url}: {secret} -- store it now: it is not "
                f"shown again. {previous}",
                messages.WARNING,
            )


class WebhookAttemptInline(TenantScopedInline, admin.TabularInline):
    model = WebhookAttempt
    company_field = "delivery__company"
    extra = 0
    can_delete = False
    fields = [
        "number",
        "started_at",
        "duration_ms",
        "status_code",
        "succeeded",
        "error",
        "response_excerpt",
    ]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.action(description="Replay selected deliveries (dead or delivered)")
def replay_deliveries(modeladmin, request, queryset):
    replayed = sum(replay_webhook_delivery(pk) for pk in queryset.values_list("pk", flat=True))
    skipped = queryset.count() - replayed
    modeladmin.message_user(request, f"Queued {replayed} deliveries again.", messages.SUCCESS)
    if skipped:
        modeladmin.message_user(
            request,
            f"{skipped} were still pending or in flight; left as they are.",
            messages.WARNING,
        )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(CompanyTimesAdmin):
    list_display = [
        "created_at",
        "company",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "delivered_at",
    ]
    list_filter = ["status", "event_type"]
    search_fields = ["event_id", "company__name", "endpoint__url"]
    actions = [replay_deliveries]
    inlines = [WebhookAttemptInline]
    readonly_fields = [
        "endpoint",
        "company",
        "event_id",
        "event_type",
        "payload",
        "status",
        "attempts",
        "next_attempt_at",
        "claimed_at",
        "last_status_code",
        "last_error",
        "created_at",
        "delivered_at",
    ]

    def has_add_permission(self, request):
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("company", "endpoint")


class OpenIncidentFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "open"

    def lookups(self, request, model_admin):
        return [("yes", "Open"), ("no", "Resolved")]

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.filter(resolved_at__isnull=True)
        if self.value() == "no":
            return queryset.filter(resolved_at__isnull=False)
        return queryset


@admin.register(Incident)
class IncidentAdmin(CompanyTimesAdmin):
    list_display = [
        "opened_at",
        "kind",
        "summary",
        "is_open",
        "resolved_at",
        "last_seen_at",
        "alert_delivery",
        "recovery_delivery",
    ]
    list_filter = [OpenIncidentFilter, "kind"]
    search_fields = ["summary", "subject", "company__name", "worker_id"]
    readonly_fields = [f.name for f in Incident._meta.fields]

    @admin.display(description="Status", ordering="resolved_at")
    def is_open(self, obj):
        # Words, not Django's boolean icon: a green tick next to an open incident misleads.
        if obj.is_open:
            return format_html('<strong class="wa-error">{}</strong>', "open")
        return "resolved"

    @admin.display(description="Alert", ordering="alert_sent_at")
    def alert_delivery(self, obj):
        return obj.delivery_status("alert_sent_at")

    @admin.display(description="Recovery notice", ordering="recovery_sent_at")
    def recovery_delivery(self, obj):
        return obj.delivery_status("recovery_sent_at")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
