"""The worker measures its own event-loop lag and reports it with its heartbeat:
on the WorkerProcess row (admin) and in /metrics, per live worker.

A loop that wakes late delays every session's work and, by seconds, the lease
renewal that keeps the worker from fencing itself."""

import time

import pytest
from django.utils import timezone

from whatsapp.models import WorkerProcess
from whatsapp.worker.supervisor import SessionSupervisor

from .test_metrics import metrics_open, scrape, value  # noqa: F401 (fixture: /metrics open)
from .worker_doubles import ScriptedTransport, fast_settings, run, wait_until


def row(worker_id):
    return WorkerProcess.objects.get(worker_id=worker_id)


@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_blocked_event_loop_shows_up_on_the_next_heartbeat_and_then_clears(settings, tmp_path):
    fast_settings(settings, tmp_path, RECONCILE_INTERVAL=0.4)
    sup = SessionSupervisor(worker_id="w-lag", transport=ScriptedTransport())

    async def scenario():
        await sup.start()
        first = await wait_until(
            lambda: WorkerProcess.objects.filter(
                worker_id="w-lag", loop_lag_ms__isnull=False
            ).first(),
            what="a heartbeat",
        )
        quiet = first.loop_lag_ms
        time.sleep(0.6)  # blocking call on the loop: nothing else runs meanwhile
        await wait_until(
            lambda: row("w-lag").loop_lag_ms >= 400, what="the blocked loop on a heartbeat"
        )
        # The next heartbeats cover a period without blocking: the figure falls back.
        await wait_until(lambda: row("w-lag").loop_lag_ms < 300, what="the lag cleared")
        await sup.shutdown("test over")
        return quiet

    quiet = run(scenario)
    assert 0 <= quiet < 300


@pytest.mark.django_db
def test_metrics_show_each_live_workers_loop_lag_and_sessions(client):
    now = timezone.now()
    WorkerProcess.objects.create(
        worker_id="w-a", channel_name="a", heartbeat_at=now, sessions_owned=12, loop_lag_ms=3.5
    )
    WorkerProcess.objects.create(worker_id="w-new", channel_name="b", heartbeat_at=now)
    WorkerProcess.objects.create(
        worker_id="w-stopped", channel_name="c", heartbeat_at=now, stopped_at=now, loop_lag_ms=9
    )

    m = scrape(client)

    assert value(m, "aiadmin_whatsapp_workers_live") == 2
    assert value(m, "aiadmin_whatsapp_worker_loop_lag_seconds", worker="w-a") == 0.0035
    assert value(m, "aiadmin_whatsapp_worker_sessions", worker="w-a") == 12
    assert value(m, "aiadmin_whatsapp_worker_sessions", worker="w-new") == 0
    # No figure before a first heartbeat; none for stopped workers.
    names = {(name, labels) for name, labels in m}
    assert ("aiadmin_whatsapp_worker_loop_lag_seconds", (("worker", "w-new"),)) not in names
    assert not any(dict(labels).get("worker") == "w-stopped" for _, labels in names)
