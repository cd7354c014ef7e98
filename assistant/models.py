"""A company's assistant: its configuration (model, facts, guard rails, the
encrypted API key) and one AssistantRun row per answered message, which is
what the admin, the API and /metrics read (tokens, cost, latency, outcome)."""

from datetime import timedelta
from decimal import Decimal

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from . import secret_box
from .prompting import DEFAULT_TEMPLATE, render_prompt

MILLION = Decimal(1_000_000)


class AssistantConfig(models.Model):
    """The assistant of one company (the "assistant" inbound handler reads it)."""

    company = models.OneToOneField(
        "companies.Company", on_delete=models.CASCADE, related_name="assistant"
    )
    is_enabled = models.BooleanField(default=True)
    # --- the model ------------------------------------------------------------
    base_url = models.URLField(
        max_length=300,
        default="https://api.openai.com/v1",
        help_text="Any OpenAI-compatible chat-completions API: OpenAI, Azure OpenAI, "
        "OpenRouter, Ollama (http://host:11434/v1), vLLM, LM Studio, a LiteLLM proxy.",
    )
    model = models.CharField(max_length=120, default="gpt-4o-mini")
    # Fernet token (assistant/secret_box.py); never shown, never serialized.
    api_key_encrypted = models.TextField(blank=True, editable=False)
    temperature = models.FloatField(
        default=0.3, validators=[MinValueValidator(0.0), MaxValueValidator(2.0)]
    )
    max_tokens = models.PositiveIntegerField(
        default=400, validators=[MinValueValidator(16), MaxValueValidator(16_000)]
    )
    history_messages = models.PositiveIntegerField(
        default=12,
        validators=[MaxValueValidator(100)],
        help_text="How many earlier messages of the chat (both ways) are sent with each turn.",
    )
    timeout_seconds = models.FloatField(
        default=20.0, validators=[MinValueValidator(1.0), MaxValueValidator(120.0)]
    )
    # --- the optional first stage -------------------------------------------
    classifier_enabled = models.BooleanField(
        default=False,
        help_text="First ask a small, fast model whether to answer, hand over or ignore.",
    )
    classifier_model = models.CharField(
        max_length=120, blank=True, help_text="Empty: the answer model."
    )
    handover_tool_enabled = models.BooleanField(
        default=True, help_text="Offer the model a tool to hand the chat to a person."
    )
    # --- the business facts and the prompt ----------------------------------
    business_name = models.CharField(
        max_length=200, blank=True, help_text="Empty: the company name."
    )
    opening_hours = models.TextField(blank=True)
    services = models.TextField(blank=True, help_text="Services and prices, one per line.")
    address = models.CharField(max_length=300, blank=True)
    booking_link = models.URLField(max_length=300, blank=True)
    tone = models.CharField(max_length=200, blank=True, default="friendly, short, no emojis")
    languages = models.CharField(max_length=200, blank=True, help_text="e.g. German, English")
    extra_instructions = models.TextField(blank=True)
    prompt_template = models.TextField(
        blank=True,
        help_text="Django template of the system prompt; empty: the default. Variables: "
        "name, opening_hours, services, address, booking_link, tone, languages, extra.",
    )
    # --- guard rails and fixed answers ----------------------------------------
    monthly_token_budget = models.PositiveIntegerField(
        default=1_000_000, help_text="Tokens (in + out) per calendar month (UTC); 0: no limit."
    )
    chat_replies_per_hour = models.PositiveIntegerField(
        default=30, help_text="Most answers per chat per hour; 0: no limit."
    )
    handover_pause_hours = models.FloatField(
        default=24.0,
        help_text="After a hand-over the assistant stays silent in that chat this long.",
    )
    fallback_message = models.TextField(
        default="Sorry, I cannot answer right now. A person from our team will get back to you."
    )
    budget_message = models.TextField(
        default="Thank you for your message. A person from our team will get back to you soon."
    )
    handover_message = models.TextField(
        default="I am passing your chat to a person from our team; they will answer here soon."
    )
    # --- prices, for the cost figures -----------------------------------------
    price_input_per_million = models.DecimalField(
        max_digits=10,
        decimal_places=4,
        default=Decimal("0.15"),
        help_text="USD per million input tokens (0 for a local model).",
    )
    price_output_per_million = models.DecimalField(
        max_digits=10,
        decimal_places=4,
        default=Decimal("0.60"),
        help_text="USD per million output tokens.",
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "assistant"

    def __str__(self):
        return f"assistant of {self.company}"

    def __repr__(self):  # never the key, not even encrypted
        return f"<AssistantConfig company={self.company_id} model={self.model!r}>"

    # --- the key --------------------------------------------------------------
    def set_api_key(self, raw):
        self.api_key_encrypted = secret_box.encrypt(raw.strip()) if raw else ""

    def api_key(self):
        """The plain key, for the one call that uses it (raises SecretError)."""
        return secret_box.decrypt(self.api_key_encrypted)

    @property
    def has_api_key(self):
        return bool(self.api_key_encrypted)

    # --- the prompt -----------------------------------------------------------
    def facts(self):
        return {
            "name": self.business_name or self.company.name,
            "opening_hours": self.opening_hours,
            "services": self.services,
            "address": self.address,
            "booking_link": self.booking_link,
            "tone": self.tone,
            "languages": self.languages,
            "extra": self.extra_instructions,
        }

    def system_prompt(self):
        """(text, version): the rendered template and its hash."""
        return render_prompt(self.prompt_template or DEFAULT_TEMPLATE, self.facts())

    @property
    def first_stage_model(self):
        return self.classifier_model or self.model

    def cost_of(self, tokens_in, tokens_out):
        return (
            Decimal(tokens_in) * self.price_input_per_million
            + Decimal(tokens_out) * self.price_output_per_million
        ) / MILLION


class Outcome(models.TextChoices):
    ANSWERED = "answered", "Answered"
    HANDED_OVER = "handed_over", "Handed to a person"
    IGNORED = "ignored", "Ignored (classifier)"
    PAUSED = "paused", "Silent: chat handed over"
    BUDGET = "budget_exhausted", "Monthly token budget reached"
    RATE_LIMITED = "rate_limited", "Chat rate limit"
    MODEL_ERROR = "model_error", "Model error"
    TIMEOUT = "timeout", "Model timeout"
    REFUSED = "refused", "Model refused"
    INVALID = "invalid_output", "Invalid structured output"


FAILURES = (Outcome.MODEL_ERROR, Outcome.TIMEOUT, Outcome.REFUSED, Outcome.INVALID)
# Outcomes that count toward a chat's rate limit (the model was asked).
CALLS = (Outcome.ANSWERED, Outcome.HANDED_OVER, Outcome.IGNORED, *FAILURES)


def month_start(now):
    return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


class AssistantRunQuerySet(models.QuerySet):
    def live(self):
        """Runs of real chats ("Try it" runs are recorded but count for nothing)."""
        return self.filter(is_test=False)

    def tokens_this_month(self, company_id, now=None):
        start = month_start(now or timezone.now())
        total = self.filter(company_id=company_id, created_at__gte=start).aggregate(
            t=Sum(models.F("tokens_in") + models.F("tokens_out"))
        )["t"]
        return total or 0

    def calls_in_chat(self, company_id, chat_jid, since):
        return (
            self.live()
            .filter(company_id=company_id, chat_jid=chat_jid, created_at__gte=since)
            .filter(outcome__in=CALLS)
            .count()
        )

    def last_handover(self, company_id, chat_jid):
        return (
            self.live()
            .filter(company_id=company_id, chat_jid=chat_jid, outcome=Outcome.HANDED_OVER)
            .order_by("-created_at")
            .values_list("created_at", flat=True)
            .first()
        )

    def failures_since(self, since):
        return (
            self.live()
            .filter(created_at__gte=since, outcome__in=FAILURES)
            .values("company_id")
            .annotate(n=Count("pk"))
        )

    def cost_per_day(self, days=14, now=None):
        """[{day, runs, tokens_in, tokens_out, cost, failures}] newest first."""
        since = (now or timezone.now()) - timedelta(days=days)
        return list(
            self.filter(created_at__gte=since)
            .annotate(day=TruncDate("created_at"))
            .values("day")
            .annotate(
                runs=Count("pk"),
                tokens_in=Sum("tokens_in"),
                tokens_out=Sum("tokens_out"),
                cost=Sum("cost"),
                failures=Count("pk", filter=Q(outcome__in=FAILURES)),
            )
            .order_by("-day")
        )


class AssistantRun(models.Model):
    """What produced one answer (or why there was none): the "why" of a reply."""

    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="assistant_runs"
    )
    message = models.ForeignKey(
        "whatsapp.InboundMessage",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="assistant_runs",
    )
    chat_jid = models.CharField(max_length=128, blank=True, db_index=True)
    is_test = models.BooleanField(default=False, help_text='A "Try it" run from the admin.')
    handler = models.CharField(max_length=64, default="assistant")
    model = models.CharField(max_length=120, blank=True)
    classifier_model = models.CharField(max_length=120, blank=True)
    prompt_version = models.CharField(max_length=12, blank=True)
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    language = models.CharField(max_length=32, blank=True)
    tokens_in = models.PositiveIntegerField(default=0)
    tokens_out = models.PositiveIntegerField(default=0)
    classify_ms = models.PositiveIntegerField(null=True, blank=True)
    answer_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    replies = models.PositiveIntegerField(default=0, help_text="Messages sent (after splitting).")
    note = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = AssistantRunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["company", "chat_jid", "created_at"])]

    def __str__(self):
        return (
            f"{self.get_outcome_display()} ({self.model or '-'}, {self.created_at:%Y-%m-%d %H:%M})"
        )

    @property
    def is_failure(self):
        return self.outcome in FAILURES

    def why(self):
        """What produced the answer, as (label, value) rows for the chat page's
        "why" panel."""
        model = self.model or "-"
        if self.classifier_model:
            model = f"{self.classifier_model} (first stage), {model}"
        latency = f"{self.total_ms} ms"
        stages = [
            f"{name} {ms} ms"
            for name, ms in (("first stage", self.classify_ms), ("answer", self.answer_ms))
            if ms is not None
        ]
        if stages:
            latency += f" ({', '.join(stages)})"
        rows = [
            ("Handler", self.handler),
            ("Model", model),
            ("Prompt version", self.prompt_version or "-"),
            ("Tokens in / out", f"{self.tokens_in} / {self.tokens_out}"),
            ("Latency", latency),
            ("Outcome", self.get_outcome_display()),
            ("Cost (USD)", f"{self.cost:.6f}"),
            ("Run", f"#{self.pk}"),
        ]
        if self.note:
            rows.append(("Note", self.note))
        return rows
