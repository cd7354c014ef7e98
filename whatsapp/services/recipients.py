"""Outbound recipients resolved as WhatsApp clients do it.

A recipient given as a phone number is asked about once (is it on WhatsApp,
and at which JID: `+52` numbers can live at WhatsApp's `521...` JIDs) and the
answer is kept per company and number (`RecipientLookup`, with a TTL). The
API uses a kept answer before anything is queued: "not on WhatsApp" is
refused at once, a known JID is queued as the recipient. Otherwise the row is
queued with `resolve_recipient` and the owning worker asks WhatsApp through
its client right before the first send (whatsapp/worker/recipients.py); a
"not on WhatsApp" answer fails the row permanently with that reason.
"""

from django.db import transaction
from django.utils import timezone

from whatsapp.models import OutboundMessage, RecipientLookup


def fresh_lookup(company_id, phone, now=None):
    """The company's unexpired answer for `phone`, or None."""
    if not phone:
        return None
    return (
        RecipientLookup.objects.filter(
            company_id=company_id, phone=phone, expires_at__gt=now or timezone.now()
        )
        .only("phone", "on_whatsapp", "jid", "expires_at")
        .first()
    )


def apply_lookup(outbound_id, lookup):
    """Point a queued/sending row at the JID WhatsApp answered (nothing to ask any more)."""
    changes = {"resolve_recipient": False}
    if lookup.on_whatsapp and lookup.jid:
        changes["to_jid"] = lookup.jid
    OutboundMessage.objects.filter(pk=outbound_id, resolve_recipient=True).update(**changes)


def cached_recipient_for(outbound_id, company_id, phone):
    """A fresh kept answer for the row's number, applied to the row; None: ask WhatsApp."""
    lookup = fresh_lookup(company_id, phone)
    if lookup is not None:
        apply_lookup(outbound_id, lookup)
    return lookup


def record_recipient_answers(company_id, answers, outbound_id=None, phone=None):
    """Keep WhatsApp's answers ({phone: transport Recipient}); with `outbound_id`,
    apply the answer for `phone` to that row. Returns the RecipientLookup of
    `phone` (None when WhatsApp did not answer for it)."""
    now = timezone.now()
    kept = {}
    with transaction.atomic():
        for asked, answer in answers.items():
            kept[asked], _ = RecipientLookup.objects.update_or_create(
                company_id=company_id,
                phone=asked,
                defaults={
                    "on_whatsapp": answer.on_whatsapp,
                    "jid": answer.jid if answer.on_whatsapp else "",
                    "checked_at": now,
                    "expires_at": RecipientLookup.expiry(answer.on_whatsapp, now),
                },
            )
        lookup = kept.get(phone)
        if outbound_id is not None and lookup is not None:
            apply_lookup(outbound_id, lookup)
    return lookup
