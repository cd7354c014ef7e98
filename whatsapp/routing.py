"""Channel and WebSocket routing for the whatsapp app."""

from django.urls import path

from whatsapp.admin_pages.consumer import AdminLiveConsumer
from whatsapp.services.leases import WORKER_CHANNEL_PREFIX

# Staff browsers: live hints that a session changed (see services/live.py).
websocket_urlpatterns = [path("ws/admin/whatsapp/", AdminLiveConsumer.as_asgi())]


class WorkerChannelRouter:
    """Routes every per-worker channel (`whatsapp.worker.<id>`) to the session
    worker consumer. ChannelNameRouter needs fixed names; ours are per process."""

    def __init__(self):
        self._app = None

    async def __call__(self, scope, receive, send):
        channel = scope.get("channel", "")
        if not channel.startswith(WORKER_CHANNEL_PREFIX):
            raise ValueError(f"no route for channel {channel!r}")
        if self._app is None:
            from whatsapp.consumers import SessionWorkerConsumer

            self._app = SessionWorkerConsumer.as_asgi()
        return await self._app(scope, receive, send)
