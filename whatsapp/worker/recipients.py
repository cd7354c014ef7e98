"""The worker's half of recipient resolution (see whatsapp/services/recipients.py).

Right before the first send of a row whose recipient was given as a phone
number, the owning session asks WhatsApp through its client -- once per new
number and company; the answer is kept with a TTL -- and sends to the JID
WhatsApp answered. "Not on WhatsApp" is a permanent failure of the row.
"""

from channels.db import database_sync_to_async as db

from whatsapp.services import recipients
from whatsapp.transport import base


async def recipient_jid(company_id, client, item):
    """The JID to send the claimed row `item` to. Raises base.TransportError
    (permanent for "not on WhatsApp"; a failed lookup is retried like a send)."""
    if not item.resolve:
        return item.to_jid
    lookup = await db(recipients.cached_recipient_for)(item.pk, company_id, item.to_phone)
    if lookup is None:
        answers = await client.is_on_whatsapp([item.to_phone])
        lookup = await db(recipients.record_recipient_answers)(
            company_id, answers, outbound_id=item.pk, phone=item.to_phone
        )
        if lookup is None:
            raise base.TransportError(f"WhatsApp did not answer whether {item.to_phone} is on it")
    if not lookup.on_whatsapp:
        raise base.TransportError(lookup.not_on_whatsapp_error, permanent=True)
    return lookup.jid or item.to_jid
