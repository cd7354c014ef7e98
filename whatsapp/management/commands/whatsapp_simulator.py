"""Run the WhatsApp simulator: `manage.py whatsapp_simulator [--host --port --state FILE]`."""

import asyncio
import logging
import signal

from django.core.management.base import BaseCommand, CommandError

from whatsapp.simulator.server import serve
from whatsapp.simulator.state import SimulatorState


class Command(BaseCommand):
    help = (
        "Run the WhatsApp simulator (WhatsApp's side of linked devices) on loopback: "
        "a websocket for the simulator transport, an HTTP JSON control API and a demo page."
    )

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument(
            "--state", default="", help="JSON file keeping paired devices across restarts"
        )
        parser.add_argument(
            "--keepalive",
            type=float,
            default=20.0,
            help="seconds between the clients' keep-alive pings",
        )
        parser.add_argument(
            "--keepalive-max-fail",
            type=float,
            default=180.0,
            help="seconds of failed keep-alives after which clients reconnect",
        )
        parser.add_argument(
            "--qr-rotate",
            type=float,
            default=20.0,
            help="seconds each QR code is shown; after 6 unscanned codes the connection ends",
        )
        parser.add_argument(
            "--auto-pair",
            type=float,
            default=None,
            metavar="SECONDS",
            help="demo: scan every QR this many seconds after it is shown",
        )
        parser.add_argument(
            "--no-receipts", action="store_true", help="do not send delivery receipts for sends"
        )

    def handle(self, *args, **opts):
        if opts["host"] not in {"127.0.0.1", "localhost", "::1"}:
            self.stderr.write(
                self.style.WARNING(
                    f"listening on {opts['host']}: the control API has no authentication"
                )
            )
        if min(opts["keepalive"], opts["keepalive_max_fail"], opts["qr_rotate"]) <= 0:
            raise CommandError("--keepalive, --keepalive-max-fail and --qr-rotate must be positive")
        if opts["auto_pair"] is not None and opts["auto_pair"] < 0:
            raise CommandError("--auto-pair must be 0 or more seconds")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s simulator %(message)s")
        state = SimulatorState(
            state_file=opts["state"] or None,
            keepalive=opts["keepalive"],
            keepalive_max_fail=opts["keepalive_max_fail"],
            receipts=not opts["no_receipts"],
            qr_rotate=opts["qr_rotate"],
        )
        self.stdout.write(
            f"WhatsApp simulator on ws://{opts['host']}:{opts['port']}/ws "
            f"(control API and demo page: http://{opts['host']}:{opts['port']}/)"
            f"; {len(state.credentials)} paired device(s) loaded"
        )
        self.stdout.flush()
        asyncio.run(self._run(state, opts))

    async def _run(self, state, opts):
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await serve(state, opts["host"], opts["port"], auto_pair=opts["auto_pair"])
        except asyncio.CancelledError:
            pass
        except OSError as exc:
            raise CommandError(f"cannot listen on {opts['host']}:{opts['port']}: {exc}") from None
        finally:
            state.save()
