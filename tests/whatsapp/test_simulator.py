"""The WhatsApp simulator's connections, driven by the real simulator transport.

Each test talks to `manage.py whatsapp_simulator` (a real subprocess) over
loopback exactly as a session worker does and checks two things: the events
the worker would see (the same ones the neonize adapter emits) and the
simulator's own counters from its control API. Messages: test_simulator_messages.
"""

import asyncio
import json
import re
import socket
import time

import pytest

from tests.e2e_processes import ControlError, Simulator, free_port
from whatsapp.transport import base
from whatsapp.transport.simulator_client import SimulatorTransport

from .simulator_clients import (  # noqa: F401  (simulator/sim are fixtures)
    KEEPALIVE,
    PHONE,
    Recorder,
    inject,
    paired_client,
    resumed_client,
    run,
    sim_fixture,
    simulator_fixture,
    transport,
)

pytestmark = pytest.mark.e2e


def test_a_qr_scan_pairs_the_device_and_a_restarted_client_resumes_without_pairing(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 1, phone="+49 30 900000001")
        qr = rec.of(base.QRCode)[0]
        assert qr.codes and all(code.startswith("2@") and code.count(",") == 3 for code in qr.codes)
        paired = rec.of(base.PairSuccess)[0]
        assert re.match(r"^4930900000001:\d+@s\.whatsapp\.net$", paired.jid)
        assert rec.of(base.Connected)[0].jid == paired.jid
        assert await client.is_logged_in()
        order = [type(e) for e in rec.events]
        assert order == [base.QRCode, base.PairSuccess, base.Connected]
        await client.stop()
        assert not await client.is_logged_in()

        again, rec2 = await resumed_client(t, 1)  # a restarted worker: same store
        connected = await rec2.wait(base.Connected)
        assert connected.jid == paired.jid and not rec2.of(base.QRCode)
        await again.stop()
        await t.aclose()

    run(body)
    stats = sim.stats()
    assert stats["totals"]["paired_by_qr"] == 1
    assert sim.company(1)["connections"] == 2
    assert sim.company(1)["conflicts"] == 0


def test_a_pairing_code_entered_on_the_phone_pairs_the_device(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        rec = Recorder()
        client = t.new_client(base.ClientSpec(company_id=2), rec)
        await client.start()
        await rec.wait(base.QRCode)
        code = await client.pair_phone("+49 151 12345678")
        assert re.match(r"^[1-9A-HJ-NP-TV-Z]{4}-[1-9A-HJ-NP-TV-Z]{4}$", code)
        with pytest.raises(ControlError) as wrong:
            await asyncio.to_thread(sim.post, "enter-code", code="ZZZZ-ZZZZ")
        assert wrong.value.status == 404
        await asyncio.to_thread(sim.post, "enter-code", code=code.lower())
        paired = await rec.wait(base.PairSuccess)
        assert paired.jid.startswith(f"{PHONE}:")
        await rec.wait(base.Connected)
        with pytest.raises(base.TransportError):  # paired now: no more codes
            await client.pair_phone(PHONE)
        await client.stop()
        await t.aclose()

    run(body)
    assert sim.stats()["totals"]["paired_by_code"] == 1


def test_a_second_connection_with_the_same_credential_replaces_the_first(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        first, rec1 = await paired_client(sim, t, 3)
        second, rec2 = await resumed_client(t, 3)
        await rec2.wait(base.Connected)
        await rec1.wait(base.StreamReplaced)
        assert not await first.is_logged_in() and await second.is_logged_in()
        await asyncio.sleep(1.0)  # the replaced client must not come back
        assert len(rec1.of(base.Connected)) == 1 and not rec1.of(base.Disconnected)
        assert not rec2.of(base.StreamReplaced)
        await first.stop()
        await second.stop()
        await t.aclose()

    run(body)
    company = sim.company(3)
    assert company["connections"] == 2 and company["conflicts"] == 1
    conflict = sim.stats()["conflicts"][0]
    assert conflict["company"] == "3" and conflict["replaced_agent"] and conflict["by_agent"]


def test_a_logout_from_the_phone_ends_the_client_and_the_credential(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 8)
        answer = await asyncio.to_thread(sim.post, "logout", company=8)
        assert answer["was_online"]
        logged_out = await rec.wait(base.LoggedOut)
        await asyncio.sleep(0.6)
        assert not rec.of(base.Disconnected) and len(rec.of(base.Connected)) == 1
        await client.stop()
        again, rec2 = await resumed_client(t, 8)  # the stored credential is void now
        on_connect = await rec2.wait(base.LoggedOut)
        await again.stop()
        await t.aclose()
        return logged_out, on_connect

    logged_out, on_connect = run(body)
    assert not logged_out.on_connect and logged_out.reason == "LOGGED_OUT"
    assert on_connect.on_connect
    assert sim.company(8)["logouts"] == 1


def test_a_logout_by_the_client_removes_the_device_and_its_stored_credential(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 9)
        store = tmp_path / "store" / "company-9.simulator.json"
        assert store.exists()
        await client.logout()
        assert not store.exists() and not await client.is_logged_in()
        await asyncio.sleep(0.5)
        assert not rec.of(base.LoggedOut) and not rec.of(base.Closed)  # no event, as whatsmeow
        await client.stop()
        await t.aclose()

    run(body)
    with pytest.raises(ControlError) as gone:
        sim.post("messages", company=9, **{"from": PHONE}, text="anyone?")
    assert gone.value.status == 404


def test_a_temporary_ban_ends_the_client_until_it_expires(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 10)
        await asyncio.to_thread(sim.post, "ban", company=10, seconds=2, code="BLOCKED_BY_USERS")
        ban = await rec.wait(base.TemporaryBan)
        await client.stop()
        during, rec2 = await resumed_client(t, 10)
        again = await rec2.wait(base.TemporaryBan)
        await during.stop()
        await asyncio.sleep(2.2)
        after, rec3 = await resumed_client(t, 10)
        await rec3.wait(base.Connected)
        await after.stop()
        await t.aclose()
        return ban, again

    ban, again = run(body)
    assert ban.code == "BLOCKED_BY_USERS" and ban.expires_in_seconds == 2
    assert 1 <= again.expires_in_seconds <= 3
    assert sim.company(10)["bans"] == 1


def test_a_dropped_connection_reconnects_by_itself_after_a_pause(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path, reconnect_step=0.5)
        client, rec = await paired_client(sim, t, 11)
        assert (await asyncio.to_thread(sim.post, "drop", company=11))["dropped"]
        await rec.wait(base.Disconnected)
        dropped_at = time.monotonic()
        await rec.wait(base.Connected, 2)
        took = time.monotonic() - dropped_at
        assert await client.is_logged_in() and client.reconnects == 1
        await client.stop()
        await t.aclose()
        return took

    took = run(body)
    assert took >= 0.45  # whatsmeow waits attempt x step before redialing
    company = sim.company(11)
    assert company["drops"] == 1 and company["connections"] == 2 and company["conflicts"] == 0


def test_keepalive_timeouts_are_reported_and_a_long_silence_forces_a_reconnect(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 12)
        await asyncio.to_thread(sim.post, "keepalive-timeout", company=12, seconds=0.8)
        await rec.wait(base.KeepAliveTimeout)
        await rec.wait(base.KeepAliveRestored, timeout=5)
        assert not rec.of(base.Disconnected)
        # Silent past keepalive_max_fail (1.5 s): the client gives up on the socket.
        await asyncio.to_thread(sim.post, "keepalive-timeout", company=12, seconds=30)
        await rec.wait(base.Disconnected, timeout=10)
        await rec.wait(base.Connected, 2, timeout=10)
        await client.stop()
        await t.aclose()
        return rec

    rec = run(body)
    counts = [e.error_count for e in rec.of(base.KeepAliveTimeout)]
    assert counts[0] == 1 and max(counts) >= 5


def test_a_first_dial_that_fails_ends_in_closed_without_retrying(tmp_path):
    async def body():
        t = SimulatorTransport(url=f"ws://127.0.0.1:{free_port()}", store_dir=tmp_path)
        rec = Recorder()
        client = t.new_client(base.ClientSpec(company_id=13), rec)
        await client.start()
        closed = await rec.wait(base.Closed)
        await asyncio.sleep(0.3)
        await client.stop()
        await t.aclose()
        return closed, rec

    closed, rec = run(body)
    assert "cannot reach the simulator" in closed.error and not closed.permanent
    assert rec.events == [closed]


def test_qr_codes_rotate_and_an_unscanned_connection_ends_in_closed(tmp_path):
    sim = Simulator(tmp_path, extra_args=["--qr-rotate", "0.2"]).start()
    try:

        async def body():
            t = transport(sim, tmp_path)
            rec = Recorder()
            client = t.new_client(base.ClientSpec(company_id=17), rec)
            await client.start()
            closed = await rec.wait(base.Closed, timeout=10)
            await asyncio.sleep(0.5)  # a failed pairing is not retried by the client
            await client.stop()
            await t.aclose()
            return closed, rec

        closed, rec = run(body)
        totals = sim.stats()["totals"]
    finally:
        sim.stop()
    assert totals["qr_expired"] == 1 and totals["qr_issued"] == 1 and totals["hellos"] == 1
    codes = [e.codes for e in rec.of(base.QRCode)]
    assert len(codes) == 6 and all(len(c) == 1 for c in codes)
    assert len({c[0] for c in codes}) == 6  # a fresh code each time
    assert closed.error == "no QR code was scanned in time" and not closed.permanent
    assert rec.events[-1] == closed and not rec.of(base.Connected)


def test_the_state_file_keeps_paired_devices_across_a_simulator_restart(tmp_path):
    state = tmp_path / "simulator-state.json"
    sim = Simulator(tmp_path, state_file=state, keepalive=KEEPALIVE).start()
    try:

        async def pair():
            t = transport(sim, tmp_path)
            client, rec = await paired_client(sim, t, 16)
            await client.stop()
            await t.aclose()
            return rec.of(base.Connected)[0].jid

        jid = run(pair)
        sim.stop()
        assert json.loads(state.read_text())["credentials"][0]["jid"] == jid
        sim.start()

        async def resume():
            t = transport(sim, tmp_path)
            client, rec = await resumed_client(t, 16)
            connected = await rec.wait(base.Connected)
            await client.stop()
            await t.aclose()
            return connected.jid, rec

        resumed, rec = run(resume)
        assert resumed == jid and not rec.of(base.LoggedOut)
    finally:
        sim.stop()


def test_one_simulator_serves_hundreds_of_connections_at_once(sim, tmp_path):
    count = 300

    async def body():
        t = transport(sim, tmp_path)
        recs = [Recorder() for _ in range(count)]
        clients = [
            t.new_client(base.ClientSpec(company_id=1000 + i), recs[i]) for i in range(count)
        ]
        started = time.monotonic()
        await asyncio.gather(*(c.start() for c in clients))
        await asyncio.gather(*(r.wait(base.QRCode, timeout=30) for r in recs))
        for i in range(count):
            await asyncio.to_thread(sim.post, "scan", company=1000 + i)
        await asyncio.gather(*(r.wait(base.Connected, timeout=30) for r in recs))
        for i in range(count):
            await inject(sim, 1000 + i, **{"from": PHONE}, text=f"to {i}")
        await asyncio.gather(*(r.wait(base.InboundMessage, timeout=30) for r in recs))
        took = time.monotonic() - started
        live = sim.stats()["live"]
        await asyncio.gather(*(c.stop() for c in clients))
        await t.aclose()
        return took, live, recs

    took, live, recs = run(body)
    print(f"{count} clients paired, connected and served one message each in {took:.1f}s")
    assert live == count
    assert all(len(r.of(base.InboundMessage)) == 1 for r in recs)
    totals = sim.stats()["totals"]
    assert totals["connections"] == count and totals["delivered"] == count
    assert totals.get("conflicts", 0) == 0


def test_the_command_refuses_bad_options_and_a_port_in_use():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="must be positive"):
        call_command("whatsapp_simulator", "--keepalive", "0")
    with pytest.raises(CommandError, match="--auto-pair"):
        call_command("whatsapp_simulator", "--auto-pair", "-1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(CommandError, match=f"cannot listen on 127.0.0.1:{port}"):
            call_command("whatsapp_simulator", "--port", str(port))


def test_the_setting_selects_the_simulator_transport_and_checks_guard_it(settings, tmp_path):
    from whatsapp.checks import check_production_services, check_whatsapp_settings
    from whatsapp.transport.base import get_transport

    settings.WHATSAPP = {
        **settings.WHATSAPP,
        "TRANSPORT": "simulator",
        "SIMULATOR_URL": "ws://127.0.0.1:9999",
        "STORE_DIR": str(tmp_path),
    }
    chosen = get_transport()
    assert isinstance(chosen, SimulatorTransport) and chosen.url == "ws://127.0.0.1:9999/ws"
    assert chosen.store_for(5) == str(tmp_path / "company-5.simulator.json")
    assert not [e for e in check_whatsapp_settings(None) if e.id == "whatsapp.E007"]
    assert "whatsapp.W003" in [w.id for w in check_production_services(None)]

    settings.WHATSAPP = {**settings.WHATSAPP, "SIMULATOR_URL": "http://127.0.0.1:9999"}
    assert "whatsapp.E007" in [e.id for e in check_whatsapp_settings(None)]
    settings.WHATSAPP = {**settings.WHATSAPP, "TRANSPORT": "neonize"}
    assert "whatsapp.W003" not in [w.id for w in check_production_services(None)]
