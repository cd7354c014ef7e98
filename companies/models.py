"""Tenants: a Company, and which Django users belong to it with what role."""

import zoneinfo

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from rest_framework_api_key.models import AbstractAPIKey

from .inbound_handlers import handler_choices


def validate_timezone(value):
    if value not in zoneinfo.available_timezones():
        raise ValidationError(f"{value!r} is not a known IANA time zone (e.g. Europe/Berlin).")


DEFAULT_STOP_WORDS = (
    "STOP, UNSUBSCRIBE, STOPP, ABMELDEN, ARRET, ARRÊT, BAJA, PARAR, ALTO, CANCELAR, SAIR, "
    "DESCADASTRAR, BASTA, DISISCRIVI, STOPPEN, DUR"
)
DEFAULT_START_WORDS = "START, ANMELDEN, ALTA, INICIAR, COMENZAR, DEMARRER, DÉMARRER, AVVIA, BAŞLA"


def word_list(words):
    return [w.strip().casefold() for w in (words or "").split(",") if w.strip()]


def _word_in(text, words):
    """The whole message (trimmed, any case, without end punctuation) is one of `words`."""
    said = (text or "").strip().rstrip(".!¡?¿ ").casefold()
    return bool(said) and said in word_list(words)


class CompanyQuerySet(models.QuerySet):
    """Who may see or manage which company: the one definition, used by the API,
    the admin (model admins, pages, autocomplete), the WebSocket and the services.

    A caller is a Django user or a company API key's principal (anything with
    `tenant_company_id`: it acts for that one company, as a manager).
    Superusers see and manage every company; other users the companies of their
    memberships, managing those where their role is owner or admin."""

    def with_role(self, user, minimum):
        """Companies where `user` holds `minimum` or a higher role."""
        if not user or not user.is_authenticated or not user.is_active:
            return self.none()
        key_company = getattr(user, "tenant_company_id", None)
        if key_company is not None:
            return self.filter(pk=key_company)
        if user.is_superuser:
            return self
        roles = Membership.Role.at_least(minimum)
        return self.filter(
            pk__in=Membership.objects.filter(user=user, role__in=roles).values("company_id")
        )

    def visible_to(self, user):
        """Companies `user` may see: any role."""
        return self.with_role(user, Membership.Role.MEMBER)

    def managed_by(self, user):
        """Companies `user` may manage (control the session, change rows,
        memberships, keys): owner or admin."""
        return self.with_role(user, Membership.Role.ADMIN)


class Company(models.Model):
    """The tenant. Its primary key is what the API and URLs use."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    is_active = models.BooleanField(default=True)
    timezone = models.CharField(max_length=64, default="UTC", validators=[validate_timezone])
    contact_name = models.CharField(max_length=200, blank=True)
    contact_email = models.EmailField(blank=True)
    contact_phone = models.CharField(max_length=32, blank=True)
    # A name from the handler registry (settings.WHATSAPP_INBOUND_HANDLERS), never a
    # dotted path: nothing stored here is imported. Blank = the settings default.
    inbound_handler = models.CharField(
        max_length=64,
        blank=True,
        choices=handler_choices,
        help_text="How inbound messages are answered. Empty: the default handler "
        "(setting WHATSAPP_INBOUND_HANDLER).",
    )
    media_retention_days = models.PositiveIntegerField(
        default=90,
        help_text="Media files (photos, voice notes, documents) are deleted this many days "
        "after the last message that used them; 0 keeps them.",
    )
    # Conversations (docs/conversations.md): human takeover, opt-out, retention.
    bot_pause_minutes = models.PositiveIntegerField(
        default=30,
        help_text="When a person replies (phone, linked device, operator), the bot stays "
        "quiet in that chat for this many minutes.",
    )
    bot_resume_keyword = models.CharField(
        max_length=64,
        blank=True,
        default="#bot",
        help_text="Typed by a person in a chat (e.g. on the phone): the bot takes over again. "
        "Empty: no keyword.",
    )
    stop_words = models.TextField(
        blank=True,
        default=DEFAULT_STOP_WORDS,
        help_text="Comma-separated. A client writing one of these (the whole message) is "
        "opted out: no handler or API message reaches them until they write a start word.",
    )
    start_words = models.TextField(blank=True, default=DEFAULT_START_WORDS)
    opt_out_confirmation = models.TextField(
        blank=True,
        default="You will not receive more messages from us. Write START to receive them again.",
        help_text="Sent once when a client opts out. Empty: no confirmation.",
    )
    message_retention_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Message texts older than this are deleted (the rows and counts stay). "
        "Empty: kept.",
    )
    # The assistant pipeline (turn handlers, docs/processing.md "Turns").
    turn_debounce_seconds = models.FloatField(
        default=2.0,
        help_text="Messages of one chat this close together are answered as one turn.",
    )
    turn_max_wait_seconds = models.FloatField(
        default=10.0,
        help_text="A turn stops collecting this long after its first message, "
        "however chatty the client.",
    )
    turn_reply_deadline_seconds = models.FloatField(
        default=30.0,
        help_text="No answer this long after the turn's first message: the holding "
        "message goes out (once).",
    )
    turn_handover_deadline_seconds = models.FloatField(
        default=90.0,
        help_text="No answer this long after the turn's first message: the chat is "
        "handed to a person and an incident opened.",
    )
    turn_holding_text = models.CharField(max_length=500, default="One moment, please...")
    turn_mark_read = models.BooleanField(
        default=True, help_text="Mark the client's messages read when their turn starts."
    )
    typing_seconds_per_char = models.FloatField(
        default=0.03, help_text="Replies are paced like a person types (0: no pacing)."
    )
    typing_max_seconds = models.FloatField(default=4.0)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = CompanyQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "companies"

    def __str__(self):
        return self.name

    def is_stop_word(self, text):
        return _word_in(text, self.stop_words)

    def is_start_word(self, text):
        return _word_in(text, self.start_words)

    def is_resume_keyword(self, text):
        keyword = self.bot_resume_keyword.strip().casefold()
        return bool(keyword) and (text or "").strip().casefold() == keyword


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        MEMBER = "member", "Member"

        @property
        def rank(self):
            return RANKS[self]

        @classmethod
        def at_least(cls, role):
            """The roles ranking `role` or higher."""
            return [r for r in cls if r.rank >= cls(role).rank]

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["company", "user"], name="uniq_membership"),
        ]

    def __str__(self):
        return f"{self.user} @ {self.company} ({self.role})"

    @classmethod
    def role_of(cls, user, company_id):
        """The role of `user` in a company (superusers: owner), or None."""
        if user.is_superuser:
            return cls.Role.OWNER
        role = cls.objects.filter(user=user, company_id=company_id).values_list("role", flat=True)
        return cls.Role(role[0]) if role else None

    @classmethod
    def may_grant(cls, user, company_id, role):
        """Whether `user` may add, change or remove a membership of `role` in the
        company: they manage it, and `role` is not above their own."""
        own = cls.role_of(user, company_id)
        return (
            own is not None
            and own.rank >= cls.Role.ADMIN.rank
            and own.rank >= cls.Role(role).rank
        )


RANKS = {Membership.Role.MEMBER: 1, Membership.Role.ADMIN: 2, Membership.Role.OWNER: 3}


class CompanyAPIKey(AbstractAPIKey):
    """A company's key for the REST API, stored hashed (shown once, when created).

    A key acts for its company only; revoking it cannot be undone."""

    company = models.ForeignKey(Company, on_delete=models.CASCADE, related_name="api_keys")

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "company API key"
        verbose_name_plural = "company API keys"

    def __str__(self):
        return f"{self.name} ({self.company})"
