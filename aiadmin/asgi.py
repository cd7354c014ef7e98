"""ASGI entry point: HTTP for daphne, and the `channel` protocol for runworker.

`manage.py runworker whatsapp` listens on a channel of its own per worker
process (see whatsapp.management.commands.runworker); every such channel is
served by one SessionWorkerConsumer, which owns that process's live clients.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiadmin.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from whatsapp.routing import WorkerChannelRouter, websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
        "channel": WorkerChannelRouter(),
    }
)
