"""Shared setup of the media tests: media storage and timings in a temporary
directory, and a simulator + the real session worker on the test's loop."""

from pathlib import Path

from aiohttp import web

from whatsapp.models import SessionState, WhatsAppSession
from whatsapp.simulator import protocol
from whatsapp.simulator.server import build_app
from whatsapp.simulator.state import SimulatorState
from whatsapp.transport.simulator_client import SimulatorTransport
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import fast_settings, wait_until

PHONE = "4915112345678"


def media_settings(settings, tmp_path, **overrides):
    """Media storage under tmp_path and short retry timings."""
    settings.STORAGES = {
        **settings.STORAGES,
        "media": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path / "media")},
        },
    }
    settings.WHATSAPP_MEDIA = {
        **settings.WHATSAPP_MEDIA,
        "BACKOFF_BASE": 0.05,
        "BACKOFF_CAP": 0.1,
        "POLL_SECONDS": 0.1,
        "DOWNLOAD_MAX_ATTEMPTS": 3,
        "TEMP_DIR": str(tmp_path / "media-tmp"),
        **overrides,
    }
    return settings.WHATSAPP_MEDIA


class MediaRig:
    """A simulator on this loop and one supervisor using the simulator transport."""

    def __init__(self, tmp_path):
        self.tmp = Path(tmp_path)
        self.sim = SimulatorState(keepalive=5.0)
        self.runner = None
        self.url = ""
        self.sup = None

    async def __aenter__(self):
        self.runner = web.AppRunner(build_app(self.sim))
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"ws://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        if self.sup is not None:
            await self.sup.shutdown("test over")
        await self.runner.cleanup()

    def transport(self):
        return SimulatorTransport(url=self.url, store_dir=self.tmp / "store", reconnect_step=0.2)

    async def start(self, company):
        self.sup = SessionSupervisor(worker_id="w-media", transport=self.transport())
        await self.sup.start()

        def state_is(wanted):
            return lambda: WhatsAppSession.objects.get(company=company).state == wanted

        await wait_until(state_is(SessionState.AWAITING_PAIRING), what="a QR")
        await self.sim.pair(self.sim.pending_for(company=company.pk), phone="4930900000001")
        await wait_until(state_is(SessionState.CONNECTED), what="connected")
        return self.sup

    async def send(self, company, kind, media=None, text="", phone=PHONE):
        """A client writes a message of `kind`; returns its WhatsApp id."""
        cred = self.sim.credential_for(company=company.pk)
        options = self.sim.media.add(kind, media) if kind in protocol.MEDIA_KINDS else None
        frame = protocol.inbound_frame(cred.jid, phone, text, kind=kind, media=options)
        await self.sim.inject(cred, [frame])
        return frame["id"]


__all__ = ["MediaRig", "media_settings", "fast_settings", "PHONE"]
