"""ASGI entry point: HTTP for daphne, and the `channel` protocol for runworker.

`manage.py runworker whatsapp` listens on a channel of its own per worker
process (see whatsapp.management.commands.runworker); every such channel is
served by one SessionWorkerConsumer, which owns that process's live clients.
"""

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiadmin.settings")
django.setup(set_prefix=False)  # what django.core.asgi.get_asgi_application does

from aiadmin.body_length import BodyLengthASGIHandler  # noqa: E402

# Django's handler, plus a Content-Length for chunked bodies (see body_length.py).
django_asgi_app = BodyLengthASGIHandler()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from whatsapp.routing import WorkerChannelRouter, websocket_urlpatterns  # noqa: E402


class UnknownWebSocketPath(AsyncWebsocketConsumer):
    """Any other WebSocket path is refused at the handshake (403), not a server
    error (URLRouter raises for a path it has no route for). No channel layer:
    nothing is ever sent to it, and a refused socket costs no Redis channel."""

    channel_layer_alias = None

    async def connect(self):
        await self.close()


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(
                URLRouter([*websocket_urlpatterns, re_path(r"", UnknownWebSocketPath.as_asgi())])
            )
        ),
        "channel": WorkerChannelRouter(),
    }
)
