"""A chat's thread: its inbound and outbound messages in one order.

The order is (time, side, id): an inbound message's `received_at`, an
outbound message's `created_at`; at the same instant inbound first. Pages
walk that order from a position (a cursor) in either direction.
"""

from django.db.models import Q

from .messages import InboundMessage, OutboundMessage

PAGE_SIZE = 50


def thread_key(message):
    if isinstance(message, InboundMessage):
        return (message.received_at, 0, message.pk)
    return (message.created_at, 1, message.pk)


def _beyond(field, cursor, side, newer):
    """Rows of one side strictly after (newer) or before the cursor's position."""
    at, cursor_side, pk = cursor
    strictly = Q(**{f"{field}__gt" if newer else f"{field}__lt": at})
    if side == cursor_side:
        return strictly | Q(**{field: at, "pk__gt" if newer else "pk__lt": pk})
    if (side > cursor_side) == newer:
        return strictly | Q(**{field: at})
    return strictly


def thread_page(chat, before=None, after=None, size=PAGE_SIZE):
    """(messages oldest first, has older, has newer) of one page of the thread."""
    inbound = InboundMessage.objects.filter(chat=chat).select_related("job")
    outbound = OutboundMessage.objects.filter(chat=chat)
    newer = after is not None
    cursor = after if newer else before
    if cursor is not None:
        inbound = inbound.filter(_beyond("received_at", cursor, 0, newer))
        outbound = outbound.filter(_beyond("created_at", cursor, 1, newer))
    sign = "" if newer else "-"
    rows = list(inbound.order_by(f"{sign}received_at", f"{sign}id")[: size + 1]) + list(
        outbound.order_by(f"{sign}created_at", f"{sign}id")[: size + 1]
    )
    rows.sort(key=thread_key, reverse=not newer)
    more = len(rows) > size
    rows = rows[:size]
    if newer:
        return rows, True, more
    rows.reverse()
    return rows, more, before is not None


