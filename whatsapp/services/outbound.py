"""Queueing outbound messages as rows; the owning worker sends them.

A message is a row first (idempotency key unique per company), and a
`message.send` hint to the owning worker second. The hint may be lost; the
worker also picks up queued rows when it reconciles, so a message queued
while no worker runs is sent once when one starts.
"""

import uuid

from django.conf import settings
from django.db import IntegrityError, transaction

from companies.phones import default_region as configured_region
from whatsapp.models import Author, OutboundMessage
from whatsapp.transport.jids import recipient_jid

from .commands import notify_owner
from .contacts import chat_for_recipient, note_chat_message


class InvalidOutbound(ValueError):
    """Bad recipient or text; the message says which."""


class OptedOut(ValueError):
    """The recipient opted out (wrote a stop word): nothing is sent to them."""

    def __init__(self, contact):
        super().__init__(
            f"{contact} opted out of messages on {contact.opted_out_at:%Y-%m-%d %H:%M} UTC "
            f"({contact.opted_out_how or 'stop word'}); nothing is sent until they write "
            "a start word"
        )
        self.contact = contact


class IdempotencyConflict(ValueError):
    """The idempotency key was used before for a different message."""

    def __init__(self, existing):
        super().__init__("idempotency key already used for a different message")
        self.existing = existing


def validate_outbound(to, text, default_region=None):
    """(jid, e164 or '', text) or raise InvalidOutbound."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidOutbound("text is empty")
    limit = settings.WHATSAPP["MAX_TEXT_LENGTH"]
    if len(text) > limit:
        raise InvalidOutbound(f"text is {len(text)} characters; the limit is {limit}")
    try:
        jid, phone = recipient_jid(to, default_region or configured_region())
    except ValueError as exc:  # InvalidRecipient, InvalidPhoneNumber
        raise InvalidOutbound(f"invalid recipient: {exc}") from None
    return jid, phone, text


def queue_outbound_message(
    company_id,
    to,
    text,
    idempotency_key=None,
    in_reply_to=None,
    author=Author.API,
    to_opted_out=False,
):
    """Store an outbound message once per (company, idempotency key), in the
    thread of its chat (created for a new 1:1 recipient).

    Returns (message, created). Reusing a key for the same recipient and text
    returns the first message; for different content raises IdempotencyConflict.
    A recipient who opted out raises OptedOut (`to_opted_out`: the one
    confirmation of their opt-out)."""
    jid, phone, text = validate_outbound(to, text)
    key = idempotency_key or f"auto:{uuid.uuid4().hex}"
    if len(key) > 128:
        raise InvalidOutbound("idempotency key is longer than 128 characters")
    with transaction.atomic():
        chat, contact = chat_for_recipient(company_id, jid, phone)
        if contact is not None and contact.is_opted_out and not to_opted_out:
            existing = _existing(company_id, key, in_reply_to)
            if existing is None:
                raise OptedOut(contact)
        try:
            with transaction.atomic():
                message = OutboundMessage.objects.create(
                    company_id=company_id,
                    to_jid=jid,
                    to_phone=phone,
                    text=text,
                    idempotency_key=key,
                    in_reply_to=in_reply_to,
                    chat=chat,
                    contact=contact,
                    author=author,
                )
        except IntegrityError:
            existing = _existing(company_id, key, in_reply_to)
            if existing is None:
                raise
            if existing.to_jid != jid or existing.text != text:
                raise IdempotencyConflict(existing) from None
            return existing, False
        if chat is not None:
            note_chat_message(
                chat.pk, text, message.created_at, unread_reset=author != Author.HANDLER
            )
        transaction.on_commit(
            lambda: notify_owner(company_id, "message.send", outbound_id=message.pk)
        )
    return message, True


def _existing(company_id, key, in_reply_to):
    found = OutboundMessage.objects.filter(company_id=company_id, idempotency_key=key).first()
    if found is None and in_reply_to is not None:
        found = OutboundMessage.objects.filter(in_reply_to=in_reply_to).first()
    return found
