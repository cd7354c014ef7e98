"""Hints to the worker that owns a company's session, over the channel layer.

Channel messages are lossy (Channels workers are at-most-once): every hint
is also a fact in the database that the worker reconciles from. Sending a
hint therefore never fails the caller; it only makes the worker act sooner.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.utils import timezone

from whatsapp.models import SessionLease, WhatsAppSession, WorkerProcess

logger = logging.getLogger(__name__)

COMMAND_TYPES = {"session.start", "session.stop", "session.restart", "session.logout",
                 "session.pair_phone", "message.send", "chat.read", "chat.presence"}


_OWNER_SQL = None


def owner_channel(company_id, now=None):
    """The channel of the worker holding `company_id`'s lease, or None. One
    statement, its SQL built once: the job stage asks this for every reply."""
    global _OWNER_SQL
    if _OWNER_SQL is None:
        q = connection.ops.quote_name
        lease = q(SessionLease._meta.db_table)
        session = q(WhatsAppSession._meta.db_table)
        worker = q(WorkerProcess._meta.db_table)
        _OWNER_SQL = (
            f"SELECT w.channel_name FROM {lease} l "
            f"JOIN {session} s ON s.id = l.session_id "
            f"JOIN {worker} w ON w.worker_id = l.owner "
            "WHERE s.company_id = %s AND l.expires_at > %s AND l.owner <> '' "
            "AND w.stopped_at IS NULL LIMIT 1"
        )
    now = connection.ops.adapt_datetimefield_value(now or timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(_OWNER_SQL, [company_id, now])
        row = cursor.fetchone()
    return row[0] if row else None


def any_worker_channel(now=None):
    """Some live worker's channel (to wake it for an unowned session), or None."""
    from django.conf import settings

    now = now or timezone.now()
    ttl = settings.WHATSAPP["LEASE_TTL"]
    return (
        WorkerProcess.objects.filter(
            stopped_at__isnull=True, heartbeat_at__gt=now - timezone.timedelta(seconds=ttl)
        )
        .order_by("sessions_owned", "?")
        .values_list("channel_name", flat=True)
        .first()
    )


def send_hint(channel, message):
    try:
        async_to_sync(get_channel_layer().send)(channel, message)
        return True
    except Exception:  # ChannelFull, layer down: the reconcile loop covers it
        logger.warning("could not send %s to %s", message.get("type"), channel, exc_info=True)
        return False


def notify_owner(company_id, command, **payload):
    """Tell the owning worker (or, for an unowned session, any live worker) to act now."""
    if command not in COMMAND_TYPES:
        raise ValueError(f"unknown command {command!r}")
    channel = owner_channel(company_id) or any_worker_channel()
    if channel is None:
        return False
    return send_hint(channel, {"type": command, "company_id": company_id, **payload})
