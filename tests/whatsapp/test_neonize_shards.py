"""neonize clients in shard processes (WHATSAPP_NEONIZE_SHARDS), with the REAL neonize.

Offline: every dial fails on DNS within milliseconds (a real failure path).
The shards are real child processes, so these tests are e2e. A shard killed
with SIGKILL stands in for Go's `fatal error: concurrent map writes`: the
process is gone without a word.
"""

import asyncio
import os
import signal

import pytest

from whatsapp.models import SessionState, WhatsAppSession
from whatsapp.services.control import start_session
from whatsapp.transport import base
from whatsapp.transport.shards import ShardedNeonizeTransport
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import fast_settings, run, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]


def test_clients_start_in_their_shards_and_a_dead_shard_costs_only_its_own(
    settings, tmp_path
):
    fast_settings(settings, tmp_path)
    transport = ShardedNeonizeTransport(shards=2)
    events = {}

    def sink_for(company):
        async def sink(event):
            events.setdefault(company, []).append(event)

        return sink

    async def scenario():
        companies = list(range(700, 706))  # even: shard 0, odd: shard 1
        clients = [
            transport.new_client(base.ClientSpec(company_id=c), sink_for(c)) for c in companies
        ]
        await asyncio.gather(*(c.start() for c in clients))
        for _ in range(500):
            if len(events) == len(companies):
                break
            await asyncio.sleep(0.01)
        first = {c: list(e) for c, e in events.items()}
        pids = [s.process.pid for s in transport._shards]
        os.kill(pids[0], signal.SIGKILL)  # as a Go fatal error would end it
        for _ in range(500):
            if all(len(events[c]) == 2 for c in companies if c % 2 == 0):
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        after_kill = {c: list(e) for c, e in events.items()}
        # A new client of the dead shard's companies starts at once on a new process.
        again = transport.new_client(base.ClientSpec(company_id=700), sink_for(7000))
        await again.start()
        for _ in range(500):
            if events.get(7000):
                break
            await asyncio.sleep(0.01)
        new_pid = transport._shards[0].process.pid
        logged_in = await clients[1].is_logged_in()
        await asyncio.gather(*(c.stop() for c in [*clients, again]))
        await transport.aclose()
        return companies, first, after_kill, pids, new_pid, logged_in

    companies, first, after_kill, pids, new_pid, logged_in = run(scenario, timeout=90)
    assert pids[0] != pids[1]
    # Every client dialled in its shard and reported the failure as neonize does.
    assert all(
        len(first[c]) == 1 and isinstance(first[c][0], base.Closed) for c in companies
    ), first
    for c in companies:
        if c % 2 == 0:  # the killed shard's clients: one more Closed, transient
            last = after_kill[c][-1]
            assert len(after_kill[c]) == 2 and isinstance(last, base.Closed)
            assert "neonize shard 0 ended" in last.error and not last.permanent
        else:  # the other shard's clients noticed nothing
            assert after_kill[c] == first[c]
    assert new_pid not in pids
    assert transport._shards[0].spawned == 2 and transport._shards[1].spawned == 1
    assert logged_in is False
    assert all(s.process.returncode is not None for s in transport._shards)


def test_the_worker_runs_its_companies_in_shards_and_outlives_a_dead_one(
    settings, tmp_path
):
    """The real supervisor with WHATSAPP_NEONIZE_SHARDS: sessions on the killed
    shard record the failure and are retried on a new shard process; the worker
    itself, and the other shard, go on."""
    from companies.models import Company

    fast_settings(settings, tmp_path, NEONIZE_SHARDS=2)
    companies = [Company.objects.create(name=f"Shard {i}", slug=f"shard-{i}") for i in range(4)]
    for company in companies:
        start_session(company.pk)

    async def scenario():
        sup = SessionSupervisor(worker_id="w-shards")
        assert type(sup.transport).__name__ == "ShardedNeonizeTransport"
        await sup.start()
        try:
            await wait_until(
                lambda: all(
                    WhatsAppSession.objects.get(company=c).connect_failure_count >= 1
                    for c in companies
                ),
                timeout=30,
                what="every company's first (failed) dial",
            )
            shards = sup.transport._shards
            os.kill(shards[0].process.pid, signal.SIGKILL)
            before = shards[0].spawned
            await wait_until(
                lambda: shards[0].spawned > before, timeout=30, what="a new shard 0"
            )
            await wait_until(
                lambda: all(
                    WhatsAppSession.objects.get(company=c).connect_failure_count >= 2
                    for c in companies
                ),
                timeout=30,
                what="dials retried",
            )
            return [s.exits for s in shards]
        finally:
            await sup.shutdown("test over")

    exits = run(scenario, timeout=120)
    assert exits[0][0] == -signal.SIGKILL
    for company in companies:
        assert WhatsAppSession.objects.get(company=company).state in {
            SessionState.STOPPED,
            SessionState.FAILED,
        }
