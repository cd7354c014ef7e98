"""`manage.py whatsapp_simulator_send "text"`: write as a phone through the simulator
and print the answers the company sends back (the demo's command-line twin of the page)."""

import json
import time
import urllib.error
import urllib.parse
import urllib.request

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from companies.models import Company


def control_base(url):
    """ws://host:port[/ws] -> http://host:port"""
    parts = urllib.parse.urlsplit(url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return f"{scheme}://{parts.netloc}"


class Command(BaseCommand):
    help = "Send a message from a simulated phone to a company and print its answers."

    def add_arguments(self, parser):
        parser.add_argument("text")
        parser.add_argument("--company", help="company id or slug (default: demo-salon)")
        parser.add_argument("--from", dest="phone", default="+49 151 12345678")
        parser.add_argument("--name", default="Anna", help="the sender's push name")
        parser.add_argument(
            "--mode", default="phone", choices=["phone", "device", "lid", "lid_only", "own"]
        )
        parser.add_argument(
            "--wait",
            type=float,
            default=15.0,
            help="seconds to wait for an answer (0: do not wait)",
        )
        parser.add_argument("--simulator", default="", help="default: WHATSAPP_SIMULATOR_URL")

    def handle(self, *args, **opts):
        company = self._company(opts["company"] or "demo-salon")
        base = control_base(opts["simulator"] or settings.WHATSAPP["SIMULATOR_URL"])
        phone = "".join(ch for ch in opts["phone"] if ch.isdigit())
        before = len(self._get(base, f"/sends?phone={phone}&company={company.pk}")["sends"])
        body = {
            "company": company.pk,
            "from": opts["phone"],
            "text": opts["text"],
            "push_name": opts["name"],
            "mode": opts["mode"],
        }
        answer = self._post(base, "/control/messages", body)
        self.stdout.write(
            f"sent {answer['ids'][0]} from +{phone} to {company.name} "
            f"({'online' if answer['online'] else 'offline: queued'})"
        )
        deadline = time.monotonic() + opts["wait"]
        while time.monotonic() < deadline:
            sends = self._get(base, f"/sends?phone={phone}&company={company.pk}")["sends"]
            if len(sends) > before:
                for reply in sends[before:]:
                    self.stdout.write(f"answer {reply['id']}: {reply['text']}")
                return
            time.sleep(0.25)
        if opts["wait"] > 0:
            raise CommandError(
                f"no answer within {opts['wait']:g}s (is the worker running "
                f"and the company paired? see {base}/stats)"
            )

    def _company(self, ref):
        query = {"pk": int(ref)} if str(ref).isdigit() else {"slug": ref}
        try:
            return Company.objects.get(**query)
        except Company.DoesNotExist:
            raise CommandError(f"no company {ref!r} (run manage.py demo_company?)") from None

    def _get(self, base, path):
        return self._call(urllib.request.Request(base + path), base)

    def _post(self, base, path, body):
        request = urllib.request.Request(
            base + path,
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return self._call(request, base)

    def _call(self, request, base):
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise CommandError(f"the simulator refused: {detail}") from None
        except OSError as exc:
            raise CommandError(
                f"cannot reach the simulator at {base}: {exc} "
                f"(start it: manage.py whatsapp_simulator)"
            ) from None
