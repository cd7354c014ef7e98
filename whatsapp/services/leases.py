"""Ownership of sessions across worker processes: leases and worker rows.

A worker may hold a company's live client only while it holds that
company's lease. Every write here is one conditional UPDATE, so the database
decides races: two workers trying to take the same free lease at the same
moment both run ``UPDATE ... WHERE owner = '' OR expires_at <= now()`` and
exactly one of them gets a row count of 1 (PostgreSQL re-checks the WHERE
clause on the row version the winner committed; SQLite has one writer).

Times are the database's clock (``Now()``), so workers on hosts with skewed
clocks still agree on when a lease expires. ``epoch`` increments on every
acquisition; worker-side writes to a session carry (owner, epoch) as a
fencing token (see whatsapp.services.sessions), so a worker that lost a lease
without noticing cannot overwrite the new owner's state.
"""

import logging
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.utils import timezone

from whatsapp.models import (
    ConnectionEvent,
    DesiredState,
    SessionLease,
    WhatsAppSession,
    WorkerProcess,
)
from whatsapp.models.sessions import LIVE_STATES

from .local_processes import ProcessIdentity, is_gone, this_process

logger = logging.getLogger(__name__)
# A worker's own channel (routed to its consumer by whatsapp.routing).
WORKER_CHANNEL_PREFIX = "whatsapp.worker."


@dataclass(frozen=True)
class Held:
    """A lease this worker holds: the fencing token for writes to its session."""

    owner: str
    session_id: int
    company_id: int
    epoch: int


def _ttl():
    return timedelta(seconds=settings.WHATSAPP["LEASE_TTL"])


def _free_q():
    """Leases nobody holds: no owner, or expired (by the database clock)."""
    return Q(owner="") | Q(expires_at__isnull=True) | Q(expires_at__lte=Now())


# --- worker processes --------------------------------------------------------
def new_worker_id():
    """`<host>.<pid>.<random>`: unique per process start, valid in a channel name."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:30]
    return f"{host or 'host'}.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def register_worker(worker_id, channel_name=None):
    channel_name = channel_name or f"{WORKER_CHANNEL_PREFIX}{worker_id}"
    me = this_process()
    worker, _ = WorkerProcess.objects.update_or_create(
        worker_id=worker_id,
        defaults={
            "channel_name": channel_name,
            "hostname": socket.gethostname()[:200],
            "pid": me.pid,
            "host_key": me.host_key,
            "process_start": me.start,
            "stop_reason": "",
            "died_at": None,
            "started_at": timezone.now(),
            "heartbeat_at": timezone.now(),
            "stopped_at": None,
            "sessions_owned": 0,
        },
    )
    return worker


class WorkerIdInUse(Exception):
    """Another live process runs under this worker id."""


def claim_worker_id(worker_id, channel_name=None, wait=None):
    """Register as `worker_id` unless another live process runs under it.

    Two processes with one id would both "hold" every lease of that id (the
    owner column is the id) and connect the same companies: the 440 cycling this
    system exists to prevent. A process restarted under a fixed id after a
    SIGKILL waits (up to a TTL by default) for its dead predecessor's heartbeat
    to lapse; a predecessor that is still alive makes it fail with a clear error."""
    host, pid = socket.gethostname()[:200], os.getpid()
    wait = settings.WHATSAPP["LEASE_TTL"] + 1 if wait is None else wait
    deadline = time.monotonic() + wait
    while True:
        other = live_workers().filter(worker_id=worker_id).exclude(hostname=host, pid=pid).first()
        if other is None:
            return register_worker(worker_id, channel_name)
        dead = ProcessIdentity(other.host_key, other.pid, other.process_start)
        if is_gone(dead):  # SIGKILLed predecessor on this machine: no need to wait
            free_dead_worker(worker_id, dead, found_by="its successor")
            continue
        if time.monotonic() >= deadline:
            raise WorkerIdInUse(
                f"worker id {worker_id!r} is in use by pid {other.pid} on {other.hostname} "
                f"(heartbeat {other.heartbeat_at:%H:%M:%S}); stop it or pick another --worker-id"
            )
        time.sleep(0.5)


def heartbeat_worker(worker_id, sessions_owned, loop_lag_ms=None):
    """Refresh this worker's row; re-register it if an operator deleted it."""
    updated = WorkerProcess.objects.filter(worker_id=worker_id).update(
        heartbeat_at=timezone.now(),
        sessions_owned=sessions_owned,
        stopped_at=None,
        loop_lag_ms=loop_lag_ms,
    )
    if not updated:
        register_worker(worker_id)


def mark_worker_stopped(worker_id, reason="stopped"):
    WorkerProcess.objects.filter(worker_id=worker_id).update(
        stopped_at=timezone.now(), sessions_owned=0, stop_reason=reason[:300]
    )


def local_peers(worker_id):
    """Other workers registered as running on this machine (same kernel, same
    pid namespace), by worker id: the ones whose death this worker can see."""
    key = this_process().host_key
    if not key:
        return {}
    rows = (
        WorkerProcess.objects.filter(host_key=key, stopped_at__isnull=True)
        .exclude(worker_id=worker_id)
        .values_list("worker_id", "pid", "process_start")
    )
    return {wid: ProcessIdentity(key, pid, start) for wid, pid, start in rows}


def free_dead_worker(worker_id, identity: ProcessIdentity, found_by):
    """Release every lease of `worker_id` whose process `identity` has ended.

    Its clients ended with its process, so the leases can be taken now rather
    than when they expire. Checked again under the worker row's lock: if the id
    was registered again since (a restart under a fixed --worker-id) or the
    process is not provably gone, nothing happens. Returns leases released."""
    with transaction.atomic():
        row = (
            WorkerProcess.objects.select_for_update()
            .filter(
                worker_id=worker_id,
                stopped_at__isnull=True,
                host_key=identity.host_key,
                pid=identity.pid,
                process_start=identity.start,
            )
            .first()
        )
        if row is None or not is_gone(identity):
            return 0
        reason = f"worker {worker_id} died (process {identity.pid} gone, seen by {found_by})"
        now = timezone.now()
        WorkerProcess.objects.filter(pk=row.pk).update(
            stopped_at=now, died_at=now, sessions_owned=0, stop_reason=reason[:300]
        )
        released = release_all_leases(worker_id, reason)
    logger.warning("%s: %d lease(s) freed", reason, released)
    return released


def live_workers(now=None):
    """Worker rows with a heartbeat within the lease TTL that did not stop."""
    now = now or timezone.now()
    return WorkerProcess.objects.filter(stopped_at__isnull=True, heartbeat_at__gt=now - _ttl())


def alive_worker_count(now=None):
    return live_workers(now).count()


def other_worker_channels(worker_id, now=None):
    return list(
        live_workers(now).exclude(worker_id=worker_id).values_list("channel_name", flat=True)
    )


# --- leases ------------------------------------------------------------------
def _wanted_sessions():
    """Sessions some worker should own: they want to run (and their company is
    active), or their row claims a live client that nobody holds any more (a
    dead worker's leftovers, which the new owner marks stopped)."""
    return WhatsAppSession.objects.filter(
        Q(desired_state=DesiredState.RUNNING, company__is_active=True) | Q(state__in=LIVE_STATES)
    )


def ensure_lease_rows():
    """Lease rows for sessions created without one (ensure_session makes both)."""
    missing = WhatsAppSession.objects.filter(lease__isnull=True).values_list("pk", flat=True)
    for session_id in missing[:1000]:
        SessionLease.objects.get_or_create(session_id=session_id)


def fair_share(wanted=None, workers=None):
    """How many sessions one worker should hold so all live workers share the load."""
    wanted = _wanted_sessions().count() if wanted is None else wanted
    workers = max(1, alive_worker_count() if workers is None else workers)
    return math.ceil(wanted / workers)


def try_acquire(worker_id, session_id):
    """Take one lease if it is free. Returns Held or None."""
    won = acquire_free(worker_id, [session_id])
    return won[0] if won else None


def acquire_free(worker_id, session_ids):
    """Take every lease among `session_ids` that is free, in one transaction:
    lock the free rows, one UPDATE for all of them, one event each.

    A worker taking over 200 sessions after a hand-over makes a few statements,
    not three per session. On PostgreSQL the free rows are locked with SKIP
    LOCKED: a row another worker is taking at this moment is left to it (no
    waiting, and no deadlock between workers locking in different orders), and
    rows that stopped being free while we waited are not in the result. SQLite
    transactions here are IMMEDIATE: one writer at a time decides."""
    session_ids = list(session_ids)
    if not session_ids:
        return []
    with transaction.atomic():
        free = list(
            SessionLease.objects.select_for_update(skip_locked=True)
            .filter(_free_q(), session_id__in=session_ids)
            .values_list("session_id", flat=True)
        )
        if not free:
            return []
        SessionLease.objects.filter(_free_q(), session_id__in=free).update(
            owner=worker_id,
            epoch=F("epoch") + 1,
            expires_at=Now() + _ttl(),
            heartbeat_at=Now(),
            acquired_at=Now(),
        )
        rows = list(
            SessionLease.objects.filter(session_id__in=free, owner=worker_id).values_list(
                "session_id", "session__company_id", "epoch", "session__state"
            )
        )
        won = [Held(worker_id, sid, cid, epoch) for sid, cid, epoch, _state in rows]
        ConnectionEvent.objects.bulk_create(
            ConnectionEvent(
                session_id=sid,
                kind=ConnectionEvent.Kind.LEASE_ACQUIRED,
                reason=f"epoch {epoch}",
                state=state,
                worker_id=worker_id,
            )
            for sid, _cid, epoch, state in rows
        )
    order = {sid: i for i, sid in enumerate(session_ids)}
    return sorted(won, key=lambda h: order[h.session_id])


def acquire_leases(worker_id, limit, only_company_id=None):
    """Acquire up to `limit` free leases of sessions that need an owner.

    Candidates are tried in a per-worker shuffled order (workers started
    together do not all fight for the same rows first), in batches: a batch
    that lost rows to another worker is topped up from the next candidates."""
    if limit <= 0:
        return []
    ensure_lease_rows()
    candidates = _wanted_sessions().filter(
        Q(lease__owner="") | Q(lease__expires_at__isnull=True) | Q(lease__expires_at__lte=Now())
    )
    if only_company_id is not None:
        candidates = candidates.filter(company_id=only_company_id)
    ids = list(candidates.order_by("?").values_list("pk", flat=True)[: limit * 3 + 10])
    won, pos = [], 0
    while len(won) < limit and pos < len(ids):
        batch = ids[pos : pos + limit - len(won)]
        pos += len(batch)
        won += acquire_free(worker_id, batch)
    return won


def seconds_to_next_expiry(worker_id):
    """Seconds until the soonest lease of another worker that some worker should
    hold expires (None if there is none): a worker with room wakes then, so a
    dead worker's sessions are taken when their leases run out, not up to a
    reconcile interval later. Live workers renew long before their leases run
    out, so only dead workers' leases come due."""
    soonest = (
        SessionLease.objects.filter(session__in=_wanted_sessions(), expires_at__gt=Now())
        .exclude(owner__in=["", worker_id])
        .annotate(db_now=Now())  # the database's clock decides expiry, not ours
        .order_by("expires_at")
        .values_list("expires_at", "db_now")
        .first()
    )
    if soonest is None:
        return None
    expires_at, now = soonest
    return max(0.0, (expires_at - now).total_seconds())


def renew_leases(worker_id):
    """Extend every unexpired lease this worker holds; return them (by session id).

    An expired lease is NOT renewed even if nobody took it: the worker must
    treat it as lost (stop the client) and acquire it again with a new epoch."""
    SessionLease.objects.filter(owner=worker_id, expires_at__gt=Now()).update(
        expires_at=Now() + _ttl(), heartbeat_at=Now()
    )
    rows = SessionLease.objects.filter(owner=worker_id, expires_at__gt=Now()).values_list(
        "session_id", "session__company_id", "epoch"
    )
    return {sid: Held(worker_id, sid, cid, epoch) for sid, cid, epoch in rows}


def holds_lease(held: Held):
    """Whether `held` is still this worker's unexpired lease (checked before connecting)."""
    return SessionLease.objects.filter(
        session_id=held.session_id, owner=held.owner, epoch=held.epoch, expires_at__gt=Now()
    ).exists()


def release_lease(worker_id, session_id, reason="released"):
    """Give a lease up at once (after the client is stopped). Returns whether we held it."""
    released = SessionLease.objects.filter(session_id=session_id, owner=worker_id).update(
        owner="", expires_at=None, heartbeat_at=Now()
    )
    if released:
        state = WhatsAppSession.objects.filter(pk=session_id).values_list("state", flat=True)
        ConnectionEvent.objects.create(
            session_id=session_id,
            kind=ConnectionEvent.Kind.LEASE_LOST,
            reason=reason[:500],
            state=state.first() or "",
            worker_id=worker_id,
        )
    return bool(released)


def release_all_leases(worker_id, reason="worker stopped", keep=()):
    """Release every lease of `worker_id` except those in `keep` (session ids),
    in one UPDATE (a worker handing 1,000 sessions over must not take 1,000
    round trips while the others wait)."""
    with transaction.atomic():
        session_ids = list(
            SessionLease.objects.select_for_update()
            .filter(owner=worker_id)
            .exclude(session_id__in=list(keep))
            .values_list("session_id", flat=True)
        )
        if not session_ids:
            return 0
        SessionLease.objects.filter(session_id__in=session_ids, owner=worker_id).update(
            owner="", expires_at=None, heartbeat_at=Now()
        )
        states = dict(WhatsAppSession.objects.filter(pk__in=session_ids).values_list("pk", "state"))
        ConnectionEvent.objects.bulk_create(
            ConnectionEvent(
                session_id=sid,
                kind=ConnectionEvent.Kind.LEASE_LOST,
                reason=reason[:500],
                state=states.get(sid, ""),
                worker_id=worker_id,
            )
            for sid in session_ids
        )
    return len(session_ids)
