"""What WhatsApp said about an outbound recipient's phone number (a cached lookup).

WhatsApp clients ask the server whether a number is on WhatsApp, and under
which JID, before the first message to it (whatsmeow's `IsOnWhatsApp`): the
answer is not always the number's own digits (Mexico's `+52` numbers can live
at WhatsApp's older `521...` JIDs, whatsmeow issue #874). The worker asks once
per new number and stores the answer here, per company, for a while
(WHATSAPP_RECIPIENT_TTL; a "not on WhatsApp" answer for
WHATSAPP_RECIPIENT_NEGATIVE_TTL, since people join).
"""

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone


class RecipientLookup(models.Model):
    company = models.ForeignKey(
        "companies.Company", on_delete=models.CASCADE, related_name="recipient_lookups"
    )
    phone = models.CharField(max_length=32)  # E.164, as asked
    on_whatsapp = models.BooleanField()
    jid = models.CharField(max_length=128, blank=True)  # where WhatsApp says it lives
    checked_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["company", "phone"], name="uniq_recipient_lookup")
        ]

    def __str__(self):
        return f"{self.phone}: {self.jid if self.on_whatsapp else 'not on WhatsApp'}"

    @staticmethod
    def ttl(on_whatsapp):
        """How long an answer stands (seconds)."""
        conf = settings.WHATSAPP
        return conf["RECIPIENT_TTL"] if on_whatsapp else conf["RECIPIENT_NEGATIVE_TTL"]

    @classmethod
    def expiry(cls, on_whatsapp, now=None):
        return (now or timezone.now()) + timedelta(seconds=cls.ttl(on_whatsapp))

    def is_fresh(self, now=None):
        return self.expires_at > (now or timezone.now())

    @property
    def not_on_whatsapp_error(self):
        return f"{self.phone} is not on WhatsApp"
