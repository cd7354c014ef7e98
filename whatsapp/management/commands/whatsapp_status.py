"""`manage.py whatsapp_status`: the health of every company's session, from the database.

What the old system did with curl and pm2 logs: one row per company with
its state, since when it is connected (or for how long it is down),
reconnections in the last hour / day / ever, 440 conflicts, connect failures,
the last error and the worker that owns the session. `--json` for scripts.
"""

import json
from datetime import timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db.models import Count, Q
from django.utils import timezone

from whatsapp.models import ConnectionEvent, SessionState, WhatsAppSession

COLUMNS = [
    ("company", "COMPANY"),
    ("state", "STATE"),
    ("since", "CONNECTED SINCE / DOWN FOR"),
    ("reconnects", "RECONNECTS 1H/24H/TOTAL"),
    ("conflicts", "CONFLICTS"),
    ("failures", "FAILURES"),
    ("last_error", "LAST ERROR"),
    ("owner", "OWNER WORKER"),
]


def _duration(delta):
    seconds = int(delta.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s"


def health_rows(now=None, company=None):
    """One dict per session, sorted by company name."""
    now = now or timezone.now()

    def reconnects_since(moment):
        return Count(
            "events",
            filter=Q(events__kind=ConnectionEvent.Kind.RECONNECTED, events__created_at__gte=moment),
        )

    sessions = (
        WhatsAppSession.objects.select_related("company", "lease")
        .annotate(
            reconnects_1h=reconnects_since(now - timedelta(hours=1)),
            reconnects_24h=reconnects_since(now - timedelta(hours=24)),
        )
        .order_by("company__name")
    )
    if company:
        sessions = sessions.filter(Q(company__slug=company) | Q(company__name=company))
    rows = []
    for s in sessions:
        lease = getattr(s, "lease", None)
        owner = lease.owner if lease is not None and lease.is_held(now) else ""
        down = s.down_for(now)
        rows.append(
            {
                "company": s.company.name,
                "company_slug": s.company.slug,
                "state": s.state,
                "desired_state": s.desired_state,
                "health": s.health(settings.WHATSAPP["WATCHDOG_SILENCE"], now),
                "connected_since": s.connected_since.isoformat() if s.connected_since else None,
                "down_for_seconds": int(down.total_seconds()) if down else 0,
                "reconnects_1h": s.reconnects_1h,
                "reconnects_24h": s.reconnects_24h,
                "reconnects_total": s.reconnect_count,
                "conflicts": s.conflict_count,
                "failures": s.connect_failure_count,
                "last_error": s.last_error,
                "last_error_at": s.last_error_at.isoformat() if s.last_error_at else None,
                "owner": owner,
            }
        )
    return rows


def _cells(row, now):
    if row["state"] == SessionState.CONNECTED and row["connected_since"]:
        since = f"since {row['connected_since'][:19].replace('T', ' ')}"
    elif row["down_for_seconds"]:
        since = f"down {_duration(timedelta(seconds=row['down_for_seconds']))}"
    else:
        since = "-"
    error = " ".join(row["last_error"].split())
    return {
        "company": row["company"],
        "state": row["state"] + ("" if row["desired_state"] == "running" else " (idle)"),
        "since": since,
        "reconnects": f"{row['reconnects_1h']}/{row['reconnects_24h']}/{row['reconnects_total']}",
        "conflicts": str(row["conflicts"]),
        "failures": str(row["failures"]),
        "last_error": (error[:57] + "...") if len(error) > 60 else (error or "-"),
        "owner": row["owner"] or "-",
    }


class Command(BaseCommand):
    help = "Print the health table of every company's WhatsApp session."

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
        parser.add_argument("--company", help="only this company (slug or name)")

    def handle(self, *args, **options):
        now = timezone.now()
        rows = health_rows(now, options.get("company"))
        if options.get("company") and not rows:
            raise CommandError(f"no session for company {options['company']!r}")
        if options["json"]:
            self.stdout.write(json.dumps(rows, indent=2))
            return
        if not rows:
            self.stdout.write("no WhatsApp sessions")
            return
        table = [dict(COLUMNS)] + [_cells(row, now) for row in rows]
        widths = {key: max(len(line[key]) for line in table) for key, _ in COLUMNS}
        for line in table:
            self.stdout.write(
                "  ".join(line[key].ljust(widths[key]) for key, _ in COLUMNS).rstrip()
            )
