"""The assistant in the admin: its configuration per company (with the
write-only key, a preview of the rendered prompt, the cost per day and
"Try it"), and its runs (what produced each answer), read-only."""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db import models
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from companies.admin_tenancy import TenantScopedAdmin

from .forms import AssistantConfigForm, TryItForm
from .models import AssistantConfig, AssistantRun
from .prompting import PromptTemplateError
from .services import TurnContext, run_turn


@admin.register(AssistantConfig)
class AssistantConfigAdmin(TenantScopedAdmin):
    form = AssistantConfigForm
    list_display = ["company", "is_enabled", "model", "base_url", "key_stored", "updated_at"]
    list_select_related = ["company"]
    readonly_fields = ["key_stored", "prompt_preview", "cost_per_day", "try_it_link"]
    fieldsets = [
        (None, {"fields": ["company", "is_enabled", "try_it_link"]}),
        (
            "Model",
            {
                "fields": [
                    "base_url",
                    "model",
                    "api_key",
                    "clear_api_key",
                    "key_stored",
                    "temperature",
                    "max_tokens",
                    "history_messages",
                    "timeout_seconds",
                ]
            },
        ),
        (
            "Two stages and hand-over",
            {
                "fields": [
                    "classifier_enabled",
                    "classifier_model",
                    "handover_tool_enabled",
                    "handover_pause_hours",
                ]
            },
        ),
        (
            "Business facts and prompt",
            {
                "fields": [
                    "business_name",
                    "opening_hours",
                    "services",
                    "address",
                    "booking_link",
                    "tone",
                    "languages",
                    "extra_instructions",
                    "prompt_template",
                    "prompt_preview",
                ]
            },
        ),
        (
            "Guard rails and fixed answers",
            {
                "fields": [
                    "monthly_token_budget",
                    "chat_replies_per_hour",
                    "fallback_message",
                    "budget_message",
                    "handover_message",
                ]
            },
        ),
        (
            "Cost",
            {
                "fields": [
                    "price_input_per_million",
                    "price_output_per_million",
                    "cost_per_day",
                ]
            },
        ),
    ]

    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if isinstance(db_field, models.URLField):
            kwargs["assume_scheme"] = "https"  # Django 6's default, today
        return super().formfield_for_dbfield(db_field, request, **kwargs)

    @admin.display(boolean=True, description="API key stored")
    def key_stored(self, obj):
        return obj.has_api_key

    @admin.display(description="Rendered prompt")
    def prompt_preview(self, obj):
        if obj.pk is None:
            return "-"
        try:
            text, version = obj.system_prompt()
        except PromptTemplateError as exc:
            return str(exc)
        return format_html("<pre style='white-space:pre-wrap'>{}</pre>version {}", text, version)

    @admin.display(description="Cost per day (last 14 days, UTC)")
    def cost_per_day(self, obj):
        if obj.pk is None:
            return "-"
        days = AssistantRun.objects.live().filter(company_id=obj.company_id).cost_per_day()
        if not days:
            return "no runs yet"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>${}</td></tr>",
            (
                (
                    d["day"],
                    d["runs"],
                    d["failures"],
                    d["tokens_in"],
                    d["tokens_out"],
                    f"{d['cost']:.4f}",
                )
                for d in days
            ),
        )
        return format_html(
            "<table><tr><th>day</th><th>runs</th><th>failures</th><th>tokens in</th>"
            "<th>tokens out</th><th>cost</th></tr>{}</table>",
            rows,
        )

    @admin.display(description="Try it")
    def try_it_link(self, obj):
        if obj.pk is None:
            return "save first"
        url = reverse("admin:assistant_assistantconfig_try", args=[obj.pk])
        return format_html('<a href="{}">Send a test conversation to the model</a>', url)

    def get_urls(self):
        return [
            path(
                "<path:object_id>/try/",
                self.admin_site.admin_view(self.try_it_view),
                name="assistant_assistantconfig_try",
            ),
            *super().get_urls(),
        ]

    def try_it_view(self, request, object_id):
        """A test turn against the configured model, without WhatsApp. Managers of
        the company only (it spends the company's tokens); CSRF-protected POST."""
        config = self.get_object(request, object_id)
        if config is None or not self.has_change_permission(request, config):
            raise PermissionDenied
        form = TryItForm(request.POST or None)
        result = None
        if request.method == "POST" and form.is_valid():
            history, new = form.turn()
            result = run_turn(
                TurnContext(config.company_id, "try-it", new, history, is_test=True), config
            )
        context = {
            **self.admin_site.each_context(request),
            "title": f"Try the assistant of {config.company}",
            "opts": self.model._meta,
            "original": config,
            "form": form,
            "result": result,
        }
        return TemplateResponse(request, "admin/assistant/try_it.html", context)


@admin.register(AssistantRun)
class AssistantRunAdmin(TenantScopedAdmin):
    list_display = [
        "created_at",
        "company",
        "outcome",
        "model",
        "prompt_version",
        "tokens_in",
        "tokens_out",
        "classify_ms",
        "answer_ms",
        "total_ms",
        "cost",
        "is_test",
    ]
    list_filter = ["outcome", "is_test", "company"]
    list_select_related = ["company"]
    search_fields = ["chat_jid", "note", "model"]
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in AssistantRun._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
