"""Downloading the media of received messages, inside the worker that owns them.

Only the worker holding a company's lease has its live client, and only a live
client can fetch WhatsApp's media, so the downloads run here -- after the
message and its job were committed and acknowledged, never in their way. The
database is the truth: a message's media row is written with the message, and
this loop claims due rows (on a hint from the inbound path, and every
WHATSAPP_MEDIA["POLL_SECONDS"]), at most DOWNLOAD_CONCURRENCY at a time. The
client streams each file into a temporary file; services.media stores it
(hash, content type, storage) or records the failure (retried with backoff).
A download cut short (the session closed) is released and runs again.
"""

import asyncio
import logging
import os
from dataclasses import replace

from channels.db import database_sync_to_async as db
from django.conf import settings

from whatsapp.services import media as svc
from whatsapp.services.media_outbound import local_copy, outbound_payload
from whatsapp.transport.base import TransportError
from whatsapp.transport.media import Location, MediaDownloadError

logger = logging.getLogger(__name__)


class MediaDownloader:
    def __init__(self, supervisor):
        conf = settings.WHATSAPP_MEDIA
        self.sup = supervisor
        self.concurrency = max(1, int(conf["DOWNLOAD_CONCURRENCY"]))
        self.poll = float(conf["POLL_SECONDS"])
        self.timeout = float(conf["DOWNLOAD_TIMEOUT"])
        self.active = set()  # media pks downloading in this process
        self.stored = 0
        self.failed = 0
        self._wake = None

    def nudge(self):
        """A message with media was stored: look for due downloads now."""
        if self._wake is not None:
            self._wake.set()

    async def run(self):
        self._wake = asyncio.Event()
        while not self.sup.closing:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %s: media round failed", self.sup.worker_id)
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll)
            except TimeoutError:
                pass
            self._wake.clear()

    async def round(self):
        free = self.concurrency - len(self.active)
        if free <= 0:
            return 0
        live = {
            company_id: ms
            for company_id, ms in self.sup.sessions.items()
            if ms.connected and ms.client is not None and not ms.stopping and not ms.closed
        }
        if not live:
            return 0
        claimed = await db(svc.claim_due_media)(list(live), free)
        for item in claimed:
            self.active.add(item.pk)
            live[item.company_id].spawn(self._download(live[item.company_id], item), "media")
        return len(claimed)

    async def _store(self, item, path):
        """Hash, type and copy in a thread of their own, so that the database
        thread (shared with recording inbound messages) only runs the queries."""
        inspected = await asyncio.to_thread(svc.inspect_file, path)
        stored = await db(svc.existing_file)(item.company_id, inspected.sha256)
        if stored is None:
            saved = await asyncio.to_thread(
                svc.save_to_storage, item.company_id, path, inspected.sha256
            )
            stored = await db(svc.record_file)(item.company_id, inspected, saved)
        await db(svc.mark_stored)(item.pk, stored)

    async def _download(self, ms, item):
        path = await asyncio.to_thread(svc.new_temp_path)
        finished = False
        try:
            client = ms.client
            if client is None:
                return
            try:
                await asyncio.wait_for(
                    client.download_media(item.descriptor, path, item.max_bytes), self.timeout
                )
            except MediaDownloadError as exc:
                await db(svc.download_failed)(item.pk, str(exc), exc.reason, exc.permanent)
                self.failed += 1
            except TimeoutError:
                await db(svc.download_failed)(item.pk, f"timed out after {self.timeout:g}s")
                self.failed += 1
            except TransportError as exc:
                await db(svc.download_failed)(item.pk, str(exc), "failed", exc.permanent)
                self.failed += 1
            else:
                await self._store(item, path)
                self.stored += 1
            finished = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("company %s: media %s download crashed", ms.company_id, item.pk)
            await db(svc.download_failed)(item.pk, f"unexpected: {exc!r}")
            finished = True
        finally:
            if not finished:  # cut short: due again at once (for the next owner too)
                await asyncio.shield(db(svc.release_claimed_media)(item.pk))
            self.active.discard(item.pk)
            try:
                os.unlink(path)
            except OSError:
                pass
            self.nudge()  # a slot is free: more may be due


async def send_media_of(client, item, to_jid):
    """Send the file or location of a claimed outbound row to `to_jid` (the
    recipient as resolved, services.recipients); WhatsApp's id."""
    try:
        payload = await db(outbound_payload)(item.media_id)
    except FileNotFoundError as exc:
        raise TransportError(str(exc), permanent=True) from exc
    if isinstance(payload, Location):
        return await client.send_location(to_jid, payload, item.message_id)
    spec, storage_name = payload
    path, temporary = await asyncio.to_thread(local_copy, storage_name)
    try:
        return await client.send_media(to_jid, replace(spec, path=path), item.message_id)
    finally:
        if temporary:
            os.unlink(path)
