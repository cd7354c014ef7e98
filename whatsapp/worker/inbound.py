"""Group commit of inbound messages inside one worker process.

Every session of the worker hands its inbound messages here and waits for the
outcome of its own message; the transport acknowledges a message only after
that (an exception means "not stored": not acknowledged, WhatsApp delivers it
again). One flush task records, in ONE transaction, every message that is
waiting -- the messages that arrived while the previous commit ran -- so under
load many messages share one commit, and a lone message is recorded at once
(no timer, no added latency). Dedupe is unchanged: each message is still one
INSERT ... ON CONFLICT DO NOTHING under the unique constraint.
"""

import asyncio
import logging

from channels.db import database_sync_to_async as db

from whatsapp.services.inbound import record_inbound_messages

logger = logging.getLogger(__name__)


class InboundBatcher:
    def __init__(self, max_batch=100):
        self.max_batch = max(1, int(max_batch))
        self._pending = []  # (company_id, NormalizedMessage, future)
        self._flusher = None
        self.batches = 0  # transactions run
        self.recorded = 0  # messages that went through them
        self.largest = 0

    async def record(self, company_id, message):
        """The message's InboundOutcome once its transaction committed; raises
        what recording it raised (the message is then not stored)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((company_id, message, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = loop.create_task(self._flush(), name="inbound-flush")
        return await future

    async def _flush(self):
        while self._pending:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            try:
                results = await db(record_inbound_messages)([(c, m) for c, m, _f in batch])
            except asyncio.CancelledError:
                for _c, _m, future in batch + self._pending:
                    future.cancel()
                self._pending.clear()
                raise
            except Exception as exc:  # e.g. no database thread: nothing was stored
                logger.exception("recording %d inbound messages failed", len(batch))
                results = [exc] * len(batch)
            self.batches += 1
            self.recorded += len(batch)
            self.largest = max(self.largest, len(batch))
            for (_c, _m, future), result in zip(batch, results, strict=True):
                if future.done():  # its session went away meanwhile
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
