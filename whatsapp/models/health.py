"""Health calculations for the admin pages: state timelines, reconnect reasons,
the dashboard report. Pure reads and arithmetic over session rows and their
ConnectionEvents; nothing here writes."""

import zoneinfo
from dataclasses import dataclass, field
from datetime import timedelta

from django.utils import timezone

from .event_words import describe_event
from .sessions import ConnectionEvent, SessionState

Kind = ConnectionEvent.Kind

# Events that say why a connection was lost, retried or refused.
REASON_KINDS = [
    Kind.DISCONNECTED,
    Kind.RECONNECTED,
    Kind.REPLACED,
    Kind.CONNECT_FAILED,
    Kind.LOGGED_OUT,
    Kind.BANNED,
    Kind.KEEPALIVE_TIMEOUT,
    Kind.SILENT,
    Kind.LEASE_LOST,
    Kind.ERROR,
]
# Drawn as marks on the timeline.
DROP_KINDS = {
    Kind.DISCONNECTED,
    Kind.REPLACED,
    Kind.CONNECT_FAILED,
    Kind.LOGGED_OUT,
    Kind.BANNED,
    Kind.KEEPALIVE_TIMEOUT,
    Kind.SILENT,
}
STATE_LABELS = dict(SessionState.choices)
TIMELINE_WIDTH = 1000  # SVG user units across the window
MIN_VISIBLE_WIDTH = 4  # a few minutes of trouble in 24 h still shows (units)
# The windows a person can pick: label -> (hours, tick step in hours, tick label format).
TIMELINE_WINDOWS = {
    "1h": (1, 0.25, "%H:%M"),
    "24h": (24, 6, "%d %b %H:%M"),
    "7d": (24 * 7, 24, "%a %d %b"),
}
MAX_TIMELINE_EVENTS = 5000


@dataclass
class Segment:
    start: object
    end: object
    state: str
    x: float
    width: float

    @property
    def label(self):
        return STATE_LABELS.get(self.state, self.state)


@dataclass
class Mark:
    at: object
    kind: str
    reason: str
    x: float


@dataclass
class Timeline:
    start: object
    end: object
    segments: list
    marks: list
    ticks: list = field(default_factory=list)  # (x, label)
    drawn_from: object = None  # when the session's history begins within the window
    tz_name: str = "UTC"

    @property
    def width(self):
        return TIMELINE_WIDTH

    def time_in(self, state):
        """How long the session spent in `state` within the window."""
        return sum((s.end - s.start for s in self.segments if s.state == state), timedelta(0))


def _x(moment, start, span):
    return round((moment - start).total_seconds() / span * TIMELINE_WIDTH, 2)


def _zone(session):
    name = getattr(getattr(session, "company", None), "timezone", "") or "UTC"
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def state_timeline(session, hours=24, now=None, window=None):
    """The session's states over the last `hours` (or a TIMELINE_WINDOWS key),
    as segments placed on an SVG of TIMELINE_WIDTH units, plus marks for
    connection drops.

    States come from the `state` recorded with each ConnectionEvent; the state
    before the window is that of the last event before it. Nothing is drawn
    before the session existed (its creation or its first event, whichever is
    earlier). A segment of trouble is at least MIN_VISIBLE_WIDTH wide. Tick
    labels are in the company's time zone, with dates."""
    step, fmt = None, None
    if window is not None:
        hours, step, fmt = TIMELINE_WINDOWS[window]
    elif hours in (1, 24, 24 * 7):
        _, step, fmt = next(v for v in TIMELINE_WINDOWS.values() if v[0] == hours)
    step = step or max(hours / 4, 1)
    fmt = fmt or "%d %b %H:%M"
    end = now or timezone.now()
    start = end - timedelta(hours=hours)
    span = (end - start).total_seconds()
    events = list(
        session.events.filter(created_at__gte=start, created_at__lte=end)
        .order_by("created_at", "id")
        .values("created_at", "kind", "reason", "state")[:MAX_TIMELINE_EVENTS]
    )
    before = (
        session.events.filter(created_at__lt=start)
        .exclude(state="")
        .order_by("-created_at", "-id")
        .values_list("state", flat=True)
        .first()
    )
    origin = getattr(session, "created_at", None) or start
    first_event = session.events.order_by("created_at").values_list("created_at", flat=True)
    first_event = first_event.first()
    if first_event is not None:
        origin = min(origin, first_event)
    drawn_from = min(max(start, origin), end)
    changes = [(e["created_at"], e["state"]) for e in events if e["state"]]
    if before:
        state = before
    elif changes:
        state = SessionState.STOPPED  # nothing known before the first event
    else:
        state = session.state
    segments = []
    cursor = drawn_from
    for at, new_state in changes:
        if new_state == state:
            continue
        if at > cursor:
            segments.append(Segment(cursor, at, state, _x(cursor, start, span), 0))
        cursor, state = max(at, cursor), new_state
    segments.append(Segment(cursor, end, state, _x(cursor, start, span), 0))
    for seg in segments:
        minimum = 0.5 if seg.state == SessionState.STOPPED else MIN_VISIBLE_WIDTH
        seg.width = max(round(_x(seg.end, start, span) - seg.x, 2), minimum)
    marks = [
        Mark(
            e["created_at"],
            e["kind"],
            describe_event(e["kind"], e["reason"]).text,
            _x(e["created_at"], start, span),
        )
        for e in events
        if e["kind"] in DROP_KINDS
    ]
    zone = _zone(session)
    ticks = []
    count = int(round(hours / step))
    for i in range(count + 1):
        moment = start + timedelta(hours=step * i)
        ticks.append((_x(moment, start, span), timezone.localtime(moment, zone).strftime(fmt)))
    return Timeline(start, end, segments, marks, ticks, drawn_from, str(zone))


@dataclass
class ReasonRow:
    kind: str
    label: str
    count: int
    last_reason: str
    last_at: object
    resolved: bool = False  # connected again since the latest one

    @property
    def words(self):
        """The latest reason in plain words, the raw text as details."""
        from .event_words import describe_event

        return describe_event(self.kind, self.last_reason)


def reconnect_reasons(session, hours=24, now=None):
    """Per kind of drop/retry in the last `hours`: how often, and the latest reason."""
    now = now or timezone.now()
    rows = {}
    events = (
        session.events.filter(created_at__gte=now - timedelta(hours=hours), kind__in=REASON_KINDS)
        .order_by("-created_at", "-id")
        .values_list("kind", "reason", "created_at")[:MAX_TIMELINE_EVENTS]
    )
    labels = dict(Kind.choices)
    for kind, reason, at in events:
        row = rows.get(kind)
        if row is None:
            rows[kind] = ReasonRow(kind, labels.get(kind, kind), 1, reason, at)
        else:
            row.count += 1
    since = session.connected_since if session.state == SessionState.CONNECTED else None
    for row in rows.values():
        row.resolved = bool(since and row.last_at <= since)
    return sorted(rows.values(), key=lambda r: (-r.count, r.kind))


@dataclass
class HealthReport:
    """The dashboard: sessions worst first, totals, and the lists that need a person."""

    sessions: list
    totals: dict
    flapping: list
    replaced: list
    logged_out: list
    down_too_long: list
    without_session: list


def health_report(sessions, companies_without_session=(), now=None):
    """`sessions`: a with_health().worst_first() queryset (already tenant-scoped)."""
    now = now or timezone.now()
    sessions = list(sessions)
    by_state = {value: 0 for value in SessionState.values}
    by_health = {"ok": 0, "warning": 0, "error": 0, "idle": 0}
    for s in sessions:
        by_state[s.state] += 1
        by_health[s.health(now=now)] += 1
    totals = {
        "sessions": len(sessions),
        "by_state": [(STATE_LABELS[k], k, v) for k, v in by_state.items() if v],
        "by_health": by_health,
        "reconnects_1h": sum(s.reconnects_1h for s in sessions),
        "reconnects_24h": sum(s.reconnects_24h for s in sessions),
        "conflicts": sum(s.conflict_count for s in sessions),
        "connect_failures": sum(s.connect_failure_count for s in sessions),
        "messages_in": sum(s.messages_in for s in sessions),
        "messages_out": sum(s.messages_out for s in sessions),
        "duplicates_blocked": sum(s.duplicates_blocked for s in sessions),
    }
    return HealthReport(
        sessions=sessions,
        totals=totals,
        flapping=[s for s in sessions if s.is_flapping()],
        replaced=[s for s in sessions if s.state == SessionState.REPLACED],
        logged_out=[s for s in sessions if s.state == SessionState.LOGGED_OUT],
        down_too_long=[s for s in sessions if s.is_down_too_long(now=now)],
        without_session=list(companies_without_session),
    )
