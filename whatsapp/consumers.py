"""The session worker's channel consumer: decode a command, hand it on.

`runworker whatsapp` serves this process's own channel
(`whatsapp.worker.<worker id>`) with one instance of this consumer. It stays
thin: every message is decoded into a Command and given to the process's
SessionSupervisor, which does the work in its own tasks. A malformed or
unknown message is rejected with a logged (and, for an owned company,
recorded) reason; it never ends the consumer.
"""

import logging

from channels.consumer import AsyncConsumer
from channels.exceptions import StopConsumer
from channels.utils import await_many_dispatch

from whatsapp.worker.commands import InvalidCommand, decode_command
from whatsapp.worker.runtime import get_supervisor

logger = logging.getLogger(__name__)


class SessionWorkerConsumer(AsyncConsumer):
    async def __call__(self, scope, receive, send):
        # Unlike AsyncConsumer, no extra per-instance channel: runworker feeds
        # us the process channel, and an idle extra channel would be polled
        # forever by the SQLite channel layer.
        self.scope = scope
        self.base_send = send
        try:
            await await_many_dispatch([receive], self.dispatch)
        except StopConsumer:
            pass

    @property
    def supervisor(self):
        return get_supervisor()

    async def dispatch(self, message):
        try:
            command = decode_command(message)
        except InvalidCommand as exc:
            await self.supervisor.reject(message, str(exc))
            return
        try:
            await self.supervisor.handle_command(command)
        except Exception:  # e.g. the database is down: the reconcile loop retries
            logger.exception("command %s for company %s failed", command.type, command.company_id)
