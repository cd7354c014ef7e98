"""Where a company's device keys live, and that a paired session survives restarts.

neonize keeps the device keys in its own store: one SQLite file per company on
the embedded default, whatsmeow's tables in a shared PostgreSQL database in
production. Our row keeps the paired JID. A restarted worker resumes the
device from both without a new pairing; a logout deletes the keys, so the
next client pairs as a new device.
"""

import asyncio
import os

import pytest
from django.db import connection

from whatsapp.models import ConnectionEvent, SessionState, WhatsAppSession
from whatsapp.services.control import start_session
from whatsapp.transport import base
from whatsapp.transport.neonize_client import NeonizeTransport, store_url
from whatsapp.worker.supervisor import SessionSupervisor

from .worker_doubles import (  # noqa: F401  (company_fixture is the `company` fixture)
    ScriptedTransport,
    company_fixture,
    fast_settings,
    run,
    wait_until,
)

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")

JID = "491701112223:5@s.whatsapp.net"


def session_of(company):
    return WhatsAppSession.objects.get(company=company)


async def run_real_client(transport, company_id, jid=""):
    """Start a real neonize client (its offline dial fails at once), then stop it."""
    seen = []

    async def sink(event):
        seen.append(event)

    client = transport.new_client(base.ClientSpec(company_id=company_id, jid=jid), sink)
    await client.start()
    for _ in range(500):
        if seen:
            break
        await asyncio.sleep(0.01)
    await client.stop()
    assert seen and isinstance(seen[0], base.Closed), seen
    return client.spec.store


def test_each_company_has_its_own_sqlite_store_that_outlives_the_client(settings, tmp_path):
    fast_settings(settings, tmp_path)
    transport = NeonizeTransport()

    async def scenario():
        first = await run_real_client(transport, 101)
        second = await run_real_client(transport, 102)
        await transport.aclose()
        return first, second

    first, second = run(scenario)
    assert first != second
    assert first == str(tmp_path / "wa-store" / "company-101.sqlite3")
    # whatsmeow created its schema in each file, and stopping kept it: the keys
    # of a paired device are still there for the next client.
    for store in (first, second):
        assert os.path.getsize(store) > 0
    # A restarted worker (a new transport) finds the same file for the company.
    assert NeonizeTransport().store_for(101) == first


def test_forgetting_a_device_deletes_only_that_companys_store(settings, tmp_path):
    fast_settings(settings, tmp_path)
    transport = NeonizeTransport()

    async def scenario():
        await run_real_client(transport, 201)
        await run_real_client(transport, 202)
        await transport.aclose()

    run(scenario)
    folder = tmp_path / "wa-store"
    assert transport.forget_device(base.ClientSpec(company_id=201, jid=JID)) is True
    assert not list(folder.glob("company-201.sqlite3*"))
    assert (folder / "company-202.sqlite3").exists()
    assert transport.forget_device(base.ClientSpec(company_id=201)) is False  # nothing left


def test_a_postgres_store_url_is_given_the_sslmode_django_would_use():
    # lib/pq (whatsmeow) defaults to sslmode=require, psycopg to prefer.
    assert store_url("postgres://u@db:5432/app") == "postgres://u@db:5432/app?sslmode=prefer"
    assert (
        store_url("postgresql://u@db/app?sslmode=disable&x=1")
        == "postgresql://u@db/app?sslmode=disable&x=1"
    )
    assert store_url("/var/wa/company-1.sqlite3") == "/var/wa/company-1.sqlite3"


@pytest.mark.e2e
def test_the_store_stays_per_company_sqlite_files_unless_a_store_url_is_set(monkeypatch):
    """PostgreSQL for the app does not put neonize's store there: its clients hold
    connections they never close (docs/worker.md); a shared store is opt-in."""
    import subprocess
    import sys

    env = {
        **os.environ,
        "DATABASE_URL": "postgres://app@db.internal:5432/aiadmin",
        "DJANGO_SETTINGS_MODULE": "tests.settings",
    }
    env.pop("WHATSAPP_STORE_URL", None)
    code = (
        "import django; django.setup(); from django.conf import settings; "
        "print(repr(settings.WHATSAPP['STORE_URL']))"
    )

    def store_url_setting():
        result = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]

    assert store_url_setting() == "''"
    env["WHATSAPP_STORE_URL"] = "postgres://wa@store.internal:5432/wa_store"
    assert store_url_setting() == "'postgres://wa@store.internal:5432/wa_store'"


def test_a_restarted_worker_resumes_the_paired_device_without_pairing(company, settings, tmp_path):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    first = ScriptedTransport(behaviour="qr")

    async def pair_then_stop():
        sup = SessionSupervisor(worker_id="w-before", transport=first)
        await sup.start()
        await wait_until(
            lambda: session_of(company).state == SessionState.AWAITING_PAIRING, what="a QR to scan"
        )
        client = first.clients[0]
        await client.emit(base.PairSuccess(jid=JID, push_name="Salon"))
        client.logged_in = True
        await client.emit(base.Connected(jid=JID))
        await wait_until(
            lambda: session_of(company).state == SessionState.CONNECTED, what="paired and connected"
        )
        await sup.shutdown("deploy")

    run(pair_then_stop)
    assert session_of(company).jid == JID
    # A new worker process: its transport resumes whatever device the spec names.
    second = ScriptedTransport(behaviour="connect")

    async def restart():
        sup = SessionSupervisor(worker_id="w-after", transport=second)
        await sup.start()
        await wait_until(
            lambda: session_of(company).state == SessionState.CONNECTED, what="resumed"
        )
        await sup.shutdown("test over")

    run(restart)
    assert [c.spec.jid for c in second.clients] == [JID]  # resumed the stored device
    assert first.forgotten == second.forgotten == []  # stopping never deletes keys
    resumed = ConnectionEvent.objects.filter(session__company=company, worker_id="w-after")
    assert not resumed.filter(kind__in=["qr", "pairing_code", "paired"]).exists()
    assert session_of(company).jid == JID


def _test_database_url():
    db = connection.settings_dict
    user = db["USER"] or "postgres"
    auth = f"{user}:{db['PASSWORD']}@" if db["PASSWORD"] else f"{user}@"
    return f"postgres://{auth}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _fake_device(cursor, jid):
    """A whatsmeow_device row (keys of the right sizes) plus one row that references it."""
    cursor.execute(
        "INSERT INTO whatsmeow_device (jid, registration_id, noise_key, identity_key, "
        "signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, "
        "adv_account_sig, adv_account_sig_key, adv_device_sig) VALUES "
        "(%s, 1, %s, %s, %s, 1, %s, %s, %s, %s, %s, %s)",
        [
            jid,
            os.urandom(32),
            os.urandom(32),
            os.urandom(32),
            os.urandom(64),
            os.urandom(32),
            b"details",
            os.urandom(64),
            os.urandom(32),
            os.urandom(64),
        ],
    )
    cursor.execute(
        "INSERT INTO whatsmeow_identity_keys (our_jid, their_id, identity) VALUES (%s, %s, %s)",
        [jid, "49170999:1", os.urandom(32)],
    )


def _backends():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return {row[0] for row in cursor.fetchall()}


@pytest.mark.postgres
def test_a_shared_postgres_store_keeps_devices_and_forgets_only_the_logged_out_one(
    settings, tmp_path
):
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL + Redis production path: runs in the PostgreSQL pass")
    fast_settings(settings, tmp_path, STORE_URL=_test_database_url())
    transport = NeonizeTransport()
    assert transport.store_for(1).endswith("?sslmode=prefer&idle_session_timeout=10000")

    async def scenario():
        # Two companies' real clients share the database store (schema created once).
        await run_real_client(transport, 301)
        await run_real_client(transport, 302)
        await transport.aclose()

    before = _backends()
    run(scenario)
    other = "491702223334:7@s.whatsapp.net"
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('whatsmeow_device') IS NOT NULL")
        assert cursor.fetchone()[0], "neonize did not create its schema in the database"
        cursor.execute("DELETE FROM whatsmeow_device WHERE jid IN (%s, %s)", [JID, other])
        _fake_device(cursor, JID)
        _fake_device(cursor, other)
    try:
        assert transport.forget_device(base.ClientSpec(company_id=301, jid=JID)) is True
        assert transport.forget_device(base.ClientSpec(company_id=301, jid="")) is False
        with connection.cursor() as cursor:
            cursor.execute("SELECT jid FROM whatsmeow_device WHERE jid IN (%s, %s)", [JID, other])
            assert [r[0] for r in cursor.fetchall()] == [other]
            cursor.execute(
                "SELECT our_jid FROM whatsmeow_identity_keys WHERE our_jid IN (%s, %s)",
                [JID, other],
            )
            assert [r[0] for r in cursor.fetchall()] == [other]  # cascaded with its device
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM whatsmeow_device WHERE jid IN (%s, %s)", [JID, other])
            # neonize's Go side keeps its database pool open after the clients
            # stop (a worker closes it by exiting); close it here so the test
            # database can be dropped.
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                "datname = current_database() AND pid <> pg_backend_pid() "
                "AND NOT (pid = ANY(%s))",
                [sorted(before)],
            )


def test_a_postgres_store_url_asks_the_server_to_close_idle_store_connections():
    assert (
        store_url("postgres://u@db/wa", idle_timeout=10)
        == "postgres://u@db/wa?sslmode=prefer&idle_session_timeout=10000"
    )
    # What an operator wrote stays; 0 = no timeout.
    assert (
        store_url("postgres://u@db/wa?idle_session_timeout=5s", idle_timeout=10)
        == "postgres://u@db/wa?idle_session_timeout=5s&sslmode=prefer"
    )
    assert "idle_session_timeout" not in store_url("postgres://u@db/wa", idle_timeout=0)


MANY = 40


def _store_connections(database):
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database])
        return cursor.fetchone()[0]


def test_many_real_clients_on_the_default_store_use_sqlite_files_and_no_server_connections(
    settings, tmp_path
):
    fast_settings(settings, tmp_path)  # the default: STORE_URL ''
    transport = NeonizeTransport()
    assert transport.store_budget() is None
    postgres = connection.vendor == "postgresql"
    before = _store_connections(connection.settings_dict["NAME"]) if postgres else 0

    async def scenario():
        stores = await asyncio.gather(*(run_real_client(transport, 500 + i) for i in range(MANY)))
        await transport.aclose()
        return stores

    stores = run(scenario, timeout=120)
    assert len(set(stores)) == MANY
    assert all(os.path.getsize(store) > 0 for store in stores)
    if postgres:
        assert _store_connections(connection.settings_dict["NAME"]) <= before


@pytest.mark.postgres
def test_many_real_clients_on_a_postgres_store_keep_its_connections_bounded(settings, tmp_path):
    """neonize opens a pool per client and never closes it (30 offline sessions
    once took the server to max_connections). With the budget and the server's
    idle timeout the store's connections stay under the budget and go away."""
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL + Redis production path: runs in the PostgreSQL pass")
    import threading

    import psycopg

    store_db = f"{connection.settings_dict['NAME']}_wastore"
    admin = _test_database_url()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{store_db}"')
    store = admin.rsplit("/", 1)[0] + f"/{store_db}"
    budget = 8
    fast_settings(
        settings, tmp_path, STORE_URL=store, STORE_IDLE_TIMEOUT=1.0, STORE_MAX_CLIENTS=budget
    )
    transport = NeonizeTransport()
    assert "idle_session_timeout=1000" in transport.store_for(1)
    assert transport.session_cap() == budget

    samples, done = [], threading.Event()

    def sample():
        with psycopg.connect(admin, autocommit=True) as conn:
            while not done.is_set():
                samples.append(
                    conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [store_db]
                    ).fetchone()[0]
                )
                done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def scenario():
        # Like a worker: it owns at most `budget` sessions (session_cap), each
        # client's dial fails and a new one starts at once.
        owned = asyncio.Semaphore(budget)

        async def session(company_id):
            async with owned:
                await run_real_client(transport, company_id)

        await asyncio.gather(*(session(700 + i) for i in range(MANY)))
        await transport.aclose()

    try:
        run(scenario, timeout=180)
        assert transport.store_budget().live == 0
        # Every stopped client's connection is closed by the server.
        run(lambda: wait_until(lambda: _store_connections(store_db) == 0, timeout=30))
    finally:
        done.set()
        sampler.join(5)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)')
    assert len(samples) > 10
    assert max(samples) > 0, "the clients never used the store"
    assert max(samples) <= budget, f"store connections peaked at {max(samples)}"


def test_the_store_budget_refuses_a_client_over_it_and_waits_for_ended_ones_to_expire():
    from whatsapp.transport.neonize_client import StoreBudget

    async def scenario():
        budget = StoreBudget(max_clients=2, idle_timeout=0.1)
        await budget.admit()
        await budget.admit()
        with pytest.raises(base.TransportError, match="WHATSAPP_STORE_MAX_CLIENTS=2"):
            await budget.admit()
        budget.release()  # its connection stays open until the server's timeout
        assert budget.recently_ended() == 1
        await budget.admit()  # waited for it to expire
        assert budget.recently_ended() == 0
        assert budget.live == 2

    run(scenario)


def test_a_worker_on_a_postgres_store_owns_at_most_the_store_budget(settings, tmp_path):
    fast_settings(settings, tmp_path, STORE_URL="postgres://wa@store/wa", STORE_MAX_CLIENTS=7)
    assert SessionSupervisor(worker_id="w-cap", transport=NeonizeTransport()).max_sessions == 7
    fast_settings(settings, tmp_path)
    assert SessionSupervisor(worker_id="w-nocap", transport=NeonizeTransport()).max_sessions == (
        settings.WHATSAPP["MAX_SESSIONS_PER_WORKER"]
    )


def test_a_postgres_store_without_the_idle_timeout_keeps_the_small_recycle_budget(
    settings, tmp_path
):
    # Without the timeout nothing but the process's exit closes an ended client's connection.
    fast_settings(settings, tmp_path, STORE_URL="postgres://wa@store/wa", STORE_IDLE_TIMEOUT=0)
    assert NeonizeTransport().leak_budget() == 25
    fast_settings(settings, tmp_path, STORE_URL="postgres://wa@store/wa", STORE_IDLE_TIMEOUT=10)
    assert NeonizeTransport().leak_budget() == 500
    fast_settings(settings, tmp_path)
    assert NeonizeTransport().leak_budget() == 500
