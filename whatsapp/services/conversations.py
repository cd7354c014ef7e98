"""Conversations: threads, human takeover, opt-out, retention and forgetting.

* `link_inbound` (in the inbound group commit, for each new client message):
  its contact and chat, found or created, learning LID <-> phone from
  `SenderAlt`; a stop word opts the contact out (confirmed once), a start
  word opts them in again; while the bot is paused the chat shows "needs a
  person".
* `record_person_reply`: a message typed on the business's own phone or
  another linked device is stored as an outbound message "by a person"
  (never a job) and pauses the bot in that chat; the company's resume keyword
  resumes it instead.
* `send_as_operator`, `pause_chat`, `resume_chat`: the admin and the API.
* What a processing job records instead of running the handler (the bot is
  paused, the client opted out) is `InboundMessage.job_verdict()`: the job
  still exists and finishes, exactly one per message.
* `forget_contact`, `delete_expired_message_bodies`: privacy.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.module_loading import import_string

from companies.models import Company
from whatsapp.models import (
    PERSON_AUTHORS,
    Author,
    Chat,
    Contact,
    InboundMessage,
    OutboundMessage,
    WebhookEvent,
)
from whatsapp.models.conversations import preview

from .contacts import (
    find_or_create_chat,
    find_or_create_contact,
    identity_of_jid,
    note_chat_message,
)
from .outbound import OptedOut, queue_outbound_message
from .webhooks import emit_event

logger = logging.getLogger(__name__)


def _iso(moment):
    return moment.isoformat() if moment else None


def chat_data(chat, now=None):
    return {
        "chat": {
            "id": chat.pk,
            "chat_jid": chat.chat_jid,
            "contact_id": chat.contact_id,
            "is_group": chat.is_group,
            "bot_state": chat.bot_state(now),
            "bot_paused_until": _iso(chat.bot_paused_until),
            "paused_by": chat.paused_by,
            "needs_human": chat.needs_human,
        }
    }


# --- inbound --------------------------------------------------------------------------
def link_inbound(company, message, message_pk, when):
    """Give new inbound message `message_pk` its contact and chat (caller's transaction)."""
    if _link_known(company, message, message_pk, when):
        return
    contact = find_or_create_contact(
        company.pk,
        phone_jid=message.sender_phone_jid,
        lid=message.sender_lid,
        phone=message.sender_phone,
        push_name=message.push_name,
        when=when,
    )
    chat = find_or_create_chat(
        company.pk,
        message.chat_jid,
        None if message.is_group else contact,
        is_group=message.is_group,
        title="" if message.is_group else message.push_name,
        last_message_at=when,
        last_message_preview=preview(message.text),
        unread=1,
    )
    InboundMessage.objects.filter(pk=message_pk).update(chat=chat, contact=contact)
    if not chat.is_new:
        note_chat_message(chat.pk, message.text, when, client=True)
    if not message.is_group and contact is not None:
        _opt_out_or_in(company, contact, message, message_pk, when)
    if chat.bot_is_paused(when) and not chat.needs_human:
        Chat.objects.filter(pk=chat.pk).update(needs_human=True)
        chat.needs_human = True
        emit_event(company.pk, WebhookEvent.CHAT_NEEDS_HUMAN, chat_data(chat, when))
    return chat, contact


def _link_known(company, message, message_pk, when):
    """The common case in four plain statements (the inbound hot path): a known
    contact writing into their known 1:1 chat, nothing new to learn, no stop or
    start word. Returns False (having changed nothing that matters) otherwise,
    and the general path runs."""
    if message.is_group or company.is_stop_word(message.text):
        return False
    if company.is_start_word(message.text):
        return False
    sql = _link_sql()
    at = connection.ops.adapt_datetimefield_value(when)
    with connection.cursor() as cursor:
        cursor.execute(
            sql["contact"],
            [at, company.pk, message.sender_phone_jid or None, message.sender_lid or None],
        )
        rows = cursor.fetchall()
        if len(rows) != 1:
            return False
        contact_id, phone_jid, lid, push_name, opted_out, contact_paused = rows[0]
        if contact_paused is not None:  # rare: the general path reads it
            return False
        name = message.push_name if message.push_name != "Client" else push_name
        if (
            (message.sender_phone_jid and phone_jid != message.sender_phone_jid)
            or (message.sender_lid and lid != message.sender_lid)
            or name != push_name
            or opted_out
        ):
            return False
        cursor.execute(
            sql["chat"],
            [at, preview(message.text), company.pk, message.chat_jid, contact_id],
        )
        chat_row = cursor.fetchone()
        if chat_row is None:
            return False
        chat_id, needs_human, chat_paused = chat_row
        cursor.execute(sql["message"], [chat_id, contact_id, message_pk])
    if chat_paused is not None and not needs_human:
        chat = Chat.objects.select_related("contact").get(pk=chat_id)
        if not chat.bot_is_paused(when):
            return True
        Chat.objects.filter(pk=chat_id).update(needs_human=True)
        chat.needs_human = True
        emit_event(company.pk, WebhookEvent.CHAT_NEEDS_HUMAN, chat_data(chat, when))
    return True


_LINK_SQL = {}


def _link_sql():
    if not _LINK_SQL:
        q = connection.ops.quote_name
        contacts, chats = q(Contact._meta.db_table), q(Chat._meta.db_table)
        messages = q(InboundMessage._meta.db_table)
        # Raw columns only: computed RETURNING columns (IS NULL, CASE) came back
        # wrong on SQLite (1 for a NULL opted_out_at: measured); a set value
        # sends the message down the general path, which reads it through the ORM.
        _LINK_SQL.update(
            # params: when, company, phone JID (None: none), LID (None: none)
            # (a contact seen now: updated and read in one statement)
            contact=(
                f"UPDATE {contacts} SET last_seen_at = %s "
                "WHERE company_id = %s AND (phone_jid = %s OR lid = %s) "
                "RETURNING id, phone_jid, lid, push_name, opted_out_at, bot_paused_until"
            ),
            # params: when, preview, company, chat JID, contact
            chat=(
                f"UPDATE {chats} SET last_message_at = %s, last_message_preview = %s, "
                f"unread = unread + 1 WHERE company_id = %s AND chat_jid = %s "
                "AND contact_id = %s AND NOT is_group RETURNING id, needs_human, bot_paused_until"
            ),
            message=f"UPDATE {messages} SET chat_id = %s, contact_id = %s WHERE id = %s",
        )
    return _LINK_SQL


def _opt_out_or_in(company, contact, message, message_pk, when):
    if not contact.is_opted_out and company.is_stop_word(message.text):
        how = f'wrote "{message.text.strip()[:40]}"'
        Contact.objects.filter(pk=contact.pk).update(
            opted_out_at=when, opted_out_how=how, opt_outs=contact.opt_outs + 1
        )
        contact.opted_out_at, contact.opted_out_how = when, how
        if company.opt_out_confirmation.strip():
            queue_outbound_message(
                company.pk,
                message.chat_jid,
                company.opt_out_confirmation,
                idempotency_key=f"opt-out:{message.message_id}",
                author=Author.SYSTEM,
                to_opted_out=True,
            )
    elif contact.is_opted_out and company.is_start_word(message.text):
        Contact.objects.filter(pk=contact.pk).update(opted_out_at=None, opted_out_how="")
        contact.opted_out_at = None


# --- a person writes ------------------------------------------------------------------
def record_person_reply(company_id, message, when):
    """Store a message typed on the business's phone / another linked device.

    Returns "stored", "duplicate" (already stored), or "ours" (an echo of a
    message we sent ourselves). Raises Company.DoesNotExist."""
    if OutboundMessage.objects.filter(
        company_id=company_id, wa_message_id=message.message_id
    ).exists():
        return "ours"
    company = Company.objects.get(pk=company_id)
    contact = None
    if not message.is_group:
        phone_jid, lid, phone = identity_of_jid(message.chat_jid)
        contact = find_or_create_contact(company_id, phone_jid, lid, phone)
    chat = find_or_create_chat(
        company_id,
        message.chat_jid,
        contact,
        is_group=message.is_group,
        title=contact.push_name if contact else "",
    )
    try:
        with transaction.atomic():
            outbound = OutboundMessage.objects.create(
                company_id=company_id,
                to_jid=message.chat_jid,
                to_phone=contact.phone if contact else "",
                text=message.text,
                idempotency_key=f"wa:{message.message_id}"[:128],
                wa_message_id=message.message_id,
                status=OutboundMessage.Status.SENT,
                sent_at=message.timestamp,
                created_at=when,
                chat=chat,
                contact=contact,
                author=Author.PHONE,
            )
    except IntegrityError:
        return "duplicate"
    note_chat_message(chat.pk, message.text, when, unread_reset=True)
    emit_event(
        company_id,
        WebhookEvent.MESSAGE_SENT_BY_PERSON,
        {**outbound_data(outbound), **chat_data(chat, when)},
    )
    if company.is_resume_keyword(message.text):
        resume_chat(chat, Author.PHONE, now=when)
    else:
        pause_chat(chat, Author.PHONE, now=when, company=company)
    return "stored"


def outbound_data(outbound):
    return {
        "message": {
            "pk": outbound.pk,
            "id": outbound.wa_message_id,
            "to_jid": outbound.to_jid,
            "text": outbound.text,
            "author": outbound.author,
            "status": outbound.status,
            "created_at": _iso(outbound.created_at),
        }
    }


def explain_replies(chat, rows):
    """What produced the chat's replies among `rows` (its thread page), from the
    apps in settings.WHATSAPP_CHAT_REPLY_EXPLAINERS: {outbound pk: [(label, value)]}."""
    replies = [m for m in rows if hasattr(m, "author")]
    found = {}
    if replies:
        for path in getattr(settings, "WHATSAPP_CHAT_REPLY_EXPLAINERS", ()):
            found.update(import_string(path)(chat.company_id, replies))
    return found


def send_as_operator(chat, text, idempotency_key=None):
    """An operator's message into `chat` (admin or API): queued, and the bot pauses.
    Raises OptedOut / InvalidOutbound / IdempotencyConflict (services.outbound)."""
    with transaction.atomic():
        outbound, created = queue_outbound_message(
            chat.company_id,
            chat.chat_jid,
            text,
            idempotency_key=idempotency_key,
            author=Author.OPERATOR,
        )
        if created:
            emit_event(
                chat.company_id,
                WebhookEvent.MESSAGE_SENT_BY_PERSON,
                {**outbound_data(outbound), **chat_data(chat)},
            )
            pause_chat(chat, Author.OPERATOR)
    return outbound, created


def pause_chat(chat, by, minutes=None, now=None, company=None):
    """Pause the bot in `chat` for `minutes` (default: the company's takeover time)."""
    now = now or timezone.now()
    if minutes is None:
        company = company or Company.objects.get(pk=chat.company_id)
        minutes = company.bot_pause_minutes
    was_paused = chat.bot_is_paused(now)
    chat.bot_paused_until = now + timedelta(minutes=minutes)
    chat.paused_by = by
    fields = {"bot_paused_until": chat.bot_paused_until, "paused_by": by}
    if by in PERSON_AUTHORS:  # a person wrote: what was waiting for one is answered
        fields["needs_human"] = chat.needs_human = False
    Chat.objects.filter(pk=chat.pk).update(**fields)
    if not was_paused:
        emit_event(chat.company_id, WebhookEvent.CHAT_PAUSED, chat_data(chat, now))
    return chat


def resume_chat(chat, by, now=None):
    """The bot answers this chat again (a button, the API, the keyword)."""
    now = now or timezone.now()
    was_paused = chat.bot_is_paused(now) or chat.needs_human
    chat.bot_paused_until, chat.paused_by, chat.needs_human = None, "", False
    Chat.objects.filter(pk=chat.pk).update(bot_paused_until=None, paused_by="", needs_human=False)
    if chat.contact_id:
        Contact.objects.filter(pk=chat.contact_id).update(bot_paused_until=None)
        if chat.contact is not None:
            chat.contact.bot_paused_until = None
    if was_paused:
        emit_event(chat.company_id, WebhookEvent.CHAT_RESUMED, {**chat_data(chat, now), "by": by})
    return chat


# --- privacy --------------------------------------------------------------------------
def forget_contact(contact):
    """Delete a contact with its messages (and their jobs), 1:1 chats and data.
    Returns how many inbound and outbound messages and chats were deleted."""
    with transaction.atomic():
        chats = list(contact.chats.filter(is_group=False).values_list("pk", flat=True))
        mine = Q(contact=contact) | Q(chat_id__in=chats)
        inbound = InboundMessage.objects.filter(mine).delete()[1].get(InboundMessage._meta.label, 0)
        outbound = (
            OutboundMessage.objects.filter(mine).delete()[1].get(OutboundMessage._meta.label, 0)
        )
        Chat.objects.filter(pk__in=chats).delete()
        contact.delete()
    return {"inbound": inbound, "outbound": outbound, "chats": len(chats)}


def delete_expired_message_bodies(now=None):
    """Clear the text of messages older than their company's retention (the
    rows, and so the counts, stay). Scheduled daily; returns rows cleared."""
    now = now or timezone.now()
    cleared = 0
    for company_id, days in Company.objects.filter(
        message_retention_days__isnull=False
    ).values_list("pk", "message_retention_days"):
        cutoff = now - timedelta(days=days)
        cleared += InboundMessage.objects.filter(
            company_id=company_id, received_at__lt=cutoff, body_deleted_at__isnull=True
        ).update(text="", body_deleted_at=now)
        cleared += OutboundMessage.objects.filter(
            company_id=company_id, created_at__lt=cutoff, body_deleted_at__isnull=True
        ).update(text="", body_deleted_at=now)
        Chat.objects.filter(company_id=company_id, last_message_at__lt=cutoff).update(
            last_message_preview=""
        )
    return cleared


__all__ = ["OptedOut", "send_as_operator", "pause_chat", "resume_chat"]
