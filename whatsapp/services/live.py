"""Live hints to staff browsers: "this company's session changed".

Published on commit to the channel-layer groups the admin WebSocket consumer
(`whatsapp.admin_pages.consumer`) joins: one group per company, and one for
superusers that sees every company. A hint carries no data beyond the company
and the new state; the browser re-reads the page, which checks access again.
Like every channel message these hints are lossy (the admin pages also poll
while their WebSocket is down), so publishing never fails the caller.
"""

import logging
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

logger = logging.getLogger(__name__)

ALL_COMPANIES_GROUP = "whatsapp-admin.all"
EVENT_TYPE = "session.changed"
CHAT_EVENT_TYPE = "chat.changed"


def company_group(company_id):
    return f"whatsapp-admin.company.{int(company_id)}"


def groups_for(company_id):
    """Every group a hint about `company_id` goes to."""
    return [company_group(company_id), ALL_COMPANIES_GROUP]


def session_changed(company_id, state=None):
    """Tell staff browsers, once the current transaction commits, that the
    session of `company_id` changed (`state`: the new state, if known)."""
    transaction.on_commit(lambda: publish_now(company_id, state))


def publish_now(company_id, state=None):
    state = str(getattr(state, "value", state) or "")
    message = {"type": EVENT_TYPE, "company_id": int(company_id), "state": state}
    try:
        layer = get_channel_layer()
        if layer is None:
            return False
        async_to_sync(_send_to_groups)(layer, groups_for(company_id), message)
        return True
    except Exception:  # layer down or full: the pages' polling covers it
        logger.warning("could not publish %s for company %s", EVENT_TYPE, company_id, exc_info=True)
        return False


CHAT_HINT_INTERVAL = 0.5  # seconds: at most one chat hint per company and process
_last_chat_hint = {}


def chats_changed(company_ids, now=None):
    """Tell staff browsers, on commit, that chats of these companies have news
    (a message, a reply, a tick): the chat pages re-read their thread.

    A hint costs a channel-layer write, so a process sends at most one per
    company every CHAT_HINT_INTERVAL (a group commit of 50 messages, or a
    burst, sends one). A hint skipped at the end of a burst is caught by the
    chat page's slow poll while it is live (admin-live.js `tick`)."""
    now = time.monotonic() if now is None else now
    ids = []
    for company_id in sorted({int(c) for c in company_ids}):
        if now - _last_chat_hint.get(company_id, -CHAT_HINT_INTERVAL) >= CHAT_HINT_INTERVAL:
            _last_chat_hint[company_id] = now
            ids.append(company_id)
    if ids:
        transaction.on_commit(lambda: _publish_chats(ids))


def _publish_chats(company_ids):
    try:
        layer = get_channel_layer()
        if layer is None:
            return
        for company_id in company_ids:
            message = {"type": CHAT_EVENT_TYPE, "company_id": company_id}
            async_to_sync(_send_to_groups)(layer, groups_for(company_id), message)
    except Exception:  # layer down or full: the chat page polls
        logger.warning("could not publish %s for %s", CHAT_EVENT_TYPE, company_ids, exc_info=True)


def publish_many(changes):
    """Publish now (outside any transaction) for each (company id, state)."""
    for company_id, state in changes:
        publish_now(company_id, state)


async def _send_to_groups(layer, groups, message):
    for group in groups:  # one trip into the event loop for all groups
        await layer.group_send(group, message)


def groups_for_user(user):
    """The groups a staff browser of `user` joins: every company for superusers,
    else one group per company they belong to."""
    from companies.models import Company

    if user.is_superuser:
        return [ALL_COMPANIES_GROUP]
    ids = Company.objects.visible_to(user).values_list("pk", flat=True)
    return [company_group(pk) for pk in ids]
