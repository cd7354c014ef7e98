"""Finding (or creating) the contact and the chat of a message, and merging
two contacts that turn out to be one person.

A contact is known by its phone JID, its LID, or both. When a message carries
both (a LID sender with `SenderAlt`, or a phone sender with its LID) and they
belong to two rows -- a LID-only contact from before the phone was known, and
a contact of the phone -- the two are merged into one: the older row keeps
its id, takes the other's identity, names, chats and messages, and the other
row is deleted. A 1:1 chat belongs to its contact: when a contact already has
a 1:1 chat, a message of that person under another JID (their LID, their
phone) joins that thread instead of opening a second one.

Everything runs in the caller's transaction (the inbound group commit, a send).
"""

from django.db import IntegrityError, transaction
from django.db.models import F, Q

from whatsapp.models import Chat, Contact, InboundMessage, OutboundMessage
from whatsapp.models.conversations import preview
from whatsapp.transport.jids import Jid, phone_or_empty


def identity_of_jid(jid):
    """(phone JID, LID, E.164) of a 1:1 chat JID."""
    try:
        parsed = Jid.parse(jid)
    except ValueError:
        return "", "", ""
    if parsed.is_lid:
        return "", parsed.bare(), ""
    if parsed.is_phone:
        return parsed.bare(), "", phone_or_empty(parsed)
    return "", "", ""


def find_contact(company_id, phone_jid="", lid=""):
    rows = _matching(company_id, phone_jid, lid)
    return rows[0] if rows else None


def _matching(company_id, phone_jid, lid):
    q = Q()
    if phone_jid:
        q |= Q(phone_jid=phone_jid)
    if lid:
        q |= Q(lid=lid)
    if not q:
        return []
    return list(Contact.objects.filter(q, company_id=company_id).order_by("pk"))


def find_or_create_contact(company_id, phone_jid="", lid="", phone="", push_name="", when=None):
    """The one contact of this identity, learning what is new (a LID's phone,
    a phone's LID, a new push name) and merging two rows that are one person."""
    rows = _matching(company_id, phone_jid, lid)
    if not rows:
        if not (phone_jid or lid):
            return None
        try:
            with transaction.atomic():
                return Contact.objects.create(
                    company_id=company_id,
                    phone_jid=phone_jid,
                    lid=lid,
                    phone=phone,
                    push_name=push_name,
                    push_names=[push_name] if push_name else [],
                    **({"first_seen_at": when, "last_seen_at": when} if when else {}),
                )
        except IntegrityError:  # created meanwhile (another transaction)
            rows = _matching(company_id, phone_jid, lid)
    contact = rows[0]
    for other in rows[1:]:
        contact = merge_contacts(contact, other)
    changes = {}
    if phone_jid and contact.phone_jid != phone_jid:
        changes["phone_jid"] = phone_jid
    if phone and contact.phone != phone:
        changes["phone"] = phone
    if lid and contact.lid != lid:
        changes["lid"] = lid
    if push_name and push_name != "Client" and contact.push_name != push_name:
        changes["push_name"] = push_name
        names = contact.with_name(push_name)
        if names is not None:
            changes["push_names"] = names
    if when:
        changes["last_seen_at"] = when
    if changes:
        Contact.objects.filter(pk=contact.pk).update(**changes)
        for field, value in changes.items():
            setattr(contact, field, value)
    return contact


def merge_contacts(keep, other):
    """Fold `other` into `keep` (same company): identity, names, opt-out,
    pause and notes; chats and messages move; a second 1:1 chat is folded into
    the first. Returns `keep`, refreshed."""
    assert keep.company_id == other.company_id
    with transaction.atomic():
        own_chat = keep.chats.filter(is_group=False).order_by("pk").first()
        for chat in other.chats.filter(is_group=False).order_by("pk"):
            if own_chat is None:
                Chat.objects.filter(pk=chat.pk).update(contact=keep)
                own_chat = chat
            else:
                merge_chats(own_chat, chat)
        Chat.objects.filter(contact=other).update(contact=keep)
        InboundMessage.objects.filter(contact=other).update(contact=keep)
        OutboundMessage.objects.filter(contact=other).update(contact=keep)
        names = list(keep.push_names)
        for name in other.push_names:
            if name not in names:
                names.append(name)
        fields = {
            "push_names": names[-20:],
            "first_seen_at": min(keep.first_seen_at, other.first_seen_at),
            "last_seen_at": max(keep.last_seen_at, other.last_seen_at),
            "opt_outs": keep.opt_outs + other.opt_outs,
            "notes": "\n".join(n for n in (keep.notes, other.notes) if n),
        }
        for name in ("phone_jid", "lid", "phone", "push_name"):
            if not getattr(keep, name) and getattr(other, name):
                fields[name] = getattr(other, name)
        if other.opted_out_at and not keep.opted_out_at:
            fields["opted_out_at"] = other.opted_out_at
            fields["opted_out_how"] = other.opted_out_how
        pauses = [t for t in (keep.bot_paused_until, other.bot_paused_until) if t]
        fields["bot_paused_until"] = max(pauses) if pauses else None
        other.delete()  # first: its unique phone JID / LID move to `keep`
        Contact.objects.filter(pk=keep.pk).update(**fields)
    keep.refresh_from_db()
    return keep


def merge_chats(keep, other):
    """Move `other`'s messages into `keep` and delete it (one thread per person)."""
    InboundMessage.objects.filter(chat=other).update(chat=keep)
    OutboundMessage.objects.filter(chat=other).update(chat=keep)
    latest = max(
        [t for t in (keep.last_message_at, other.last_message_at) if t], default=None
    )
    fields = {"unread": F("unread") + other.unread, "last_message_at": latest}
    if other.last_message_at and other.last_message_at == latest:
        fields["last_message_preview"] = other.last_message_preview
    if other.needs_human:
        fields["needs_human"] = True
    pauses = [t for t in (keep.bot_paused_until, other.bot_paused_until) if t]
    if pauses:
        fields["bot_paused_until"] = max(pauses)
    other.delete()
    Chat.objects.filter(pk=keep.pk).update(**fields)


def find_or_create_chat(company_id, chat_jid, contact=None, is_group=False, title=""):
    """The chat of `chat_jid`, or the contact's 1:1 chat under another JID, or a new one."""
    chat = Chat.objects.filter(company_id=company_id, chat_jid=chat_jid).first()
    if chat is None and contact is not None and not is_group:
        chat = Chat.objects.filter(company_id=company_id, contact=contact, is_group=False).first()
    if chat is None:
        try:
            with transaction.atomic():
                return Chat.objects.create(
                    company_id=company_id,
                    chat_jid=chat_jid,
                    contact=contact,
                    is_group=is_group,
                    title=title,
                )
        except IntegrityError:
            return Chat.objects.get(company_id=company_id, chat_jid=chat_jid)
    if contact is not None and not is_group and chat.contact_id != contact.pk:
        Chat.objects.filter(pk=chat.pk).update(contact=contact)
        chat.contact = contact
    return chat


def chat_for_recipient(company_id, jid, phone=""):
    """(chat, contact) a send to `jid` belongs to, created for a 1:1 chat if new."""
    chat = Chat.objects.filter(company_id=company_id, chat_jid=jid).select_related("contact")
    chat = chat.first()
    if chat is not None:
        return chat, chat.contact
    if jid.endswith("@g.us"):
        return find_or_create_chat(company_id, jid, is_group=True), None
    phone_jid, lid, derived = identity_of_jid(jid)
    if not (phone_jid or lid):
        return None, None
    contact = find_or_create_contact(company_id, phone_jid, lid, phone or derived)
    return find_or_create_chat(company_id, jid, contact, title=contact.push_name), contact


def note_chat_message(chat_id, text, when, client=False, unread_reset=False):
    """A message joined the thread: its time and preview; a client's counts as unread."""
    fields = {"last_message_at": when, "last_message_preview": preview(text)}
    if client:
        fields["unread"] = F("unread") + 1
    elif unread_reset:
        fields["unread"] = 0
    Chat.objects.filter(pk=chat_id).filter(
        Q(last_message_at__isnull=True) | Q(last_message_at__lte=when)
    ).update(**fields)
