"""What the client sees while its turn is handled: read marks and "typing...".

Both are hints to the worker that owns the company's WhatsApp connection
(services.worker_hints, lossy like every hint): best effort, never failing the
turn. The worker passes them to its transport client (mark_read,
send_presence), which the simulator records for the e2e tests.
"""

from .worker_hints import owner_channel, send_hint


def notify_owner(company_id, command, **payload):
    """To the owning worker only: a hint for a session nobody holds is moot."""
    channel = owner_channel(company_id)
    if channel is not None:
        send_hint(channel, {"type": command, "company_id": company_id, **payload})


class WorkerHints:
    def mark_read(self, company_id, chat_jid, messages):
        if not messages:
            return
        by_sender = {}
        for m in messages:
            by_sender.setdefault(m.sender_jid, []).append(m.wa_message_id)
        for sender, ids in by_sender.items():
            notify_owner(company_id, "chat.read", chat=chat_jid, sender=sender, message_ids=ids)

    def composing(self, company_id, chat_jid):
        notify_owner(company_id, "chat.presence", chat=chat_jid, state="composing")

    def paused(self, company_id, chat_jid):
        notify_owner(company_id, "chat.presence", chat=chat_jid, state="paused")
