"""Placeholder until the session worker lands (issue 3)."""

from channels.consumer import AsyncConsumer


class SessionWorkerConsumer(AsyncConsumer):
    pass
