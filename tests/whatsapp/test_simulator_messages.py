"""The WhatsApp simulator's messages: inbound from phones (ids, JIDs, redelivery,
the offline queue), sends and their receipts, and bad requests and frames."""

import asyncio
import json
import re
import time

import aiohttp
import pytest

from tests.e2e_processes import ControlError
from whatsapp.transport import base
from whatsapp.transport.normalize import normalize_message

from .simulator_clients import (  # noqa: F401  (simulator/sim are fixtures)
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

WEB_ID = re.compile(r"^3EB0[0-9A-F]{18}$")


def test_inbound_messages_are_real_message_protobufs_with_realistic_ids_and_jids(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 4)
        sent = await inject(
            sim,
            4,
            messages=[
                {"from": PHONE, "text": "plain", "push_name": "Anna"},
                {
                    "from": PHONE,
                    "text": "from a linked device",
                    "mode": "device",
                    "style": "iphone",
                },
                {"from": PHONE, "text": "privacy id", "mode": "lid"},
                {"from": PHONE, "text": "in a group", "mode": "group"},
                {"from": PHONE, "text": "my status", "mode": "status"},
            ],
        )
        await rec.wait(base.InboundMessage, 5)
        await client.stop()
        await t.aclose()
        return sent["ids"], [normalize_message(e.event) for e in rec.of(base.InboundMessage)]

    ids, (plain, device, lid, group, status) = run(body)
    assert re.match(r"^[0-9A-F]{32}$", ids[0]) and re.match(r"^3A[0-9A-F]{18}$", ids[1])
    assert [m.message_id for m in (plain, device, lid, group, status)] == ids
    assert plain.text == "plain" and plain.push_name == "Anna"
    assert plain.chat_jid == f"{PHONE}@s.whatsapp.net" and plain.sender_lid.endswith("@lid")
    for message in (plain, device, lid, group):
        assert message.sender_phone == f"+{PHONE}"
    assert device.chat_jid == f"{PHONE}@s.whatsapp.net" and not device.is_group
    assert lid.chat_jid.endswith("@lid") and lid.chat_jid == lid.sender_lid
    assert group.is_group and group.chat_jid.endswith("@g.us")
    assert group.sender_lid == lid.sender_lid  # one phone, one LID
    assert status.is_status and not status.is_client_message  # delivered, never answered
    assert all(m.is_client_message for m in (plain, device, lid, group))


def test_media_locations_and_reactions_arrive_as_the_message_types_phones_send(sim, tmp_path):
    kinds = ["image", "video", "document", "audio", "location"]

    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 18)
        sent = await inject(
            sim,
            18,
            messages=[{"from": PHONE, "text": f"a {k}", "kind": k} for k in kinds],
        )
        await inject(
            sim, 18, **{"from": PHONE}, text="\U0001f44d", kind="reaction", reacts_to=sent["ids"][0]
        )
        await rec.wait(base.InboundMessage, 6)
        await client.stop()
        await t.aclose()
        return rec.of(base.InboundMessage)

    events = run(body)
    messages = [normalize_message(e.event) for e in events]
    assert [m.kind for m in messages] == [*kinds, "reaction"]
    assert [m.text for m in messages[:3]] == ["a image", "a video", "a document"]
    assert events[3].event.Message.audioMessage.PTT
    assert events[4].event.Message.locationMessage.name == "a location"
    reaction = events[5].event.Message.reactionMessage
    assert reaction.key.ID == messages[0].message_id and reaction.text == "\U0001f44d"
    assert all(m.is_client_message for m in messages[:5]) and not messages[5].is_client_message


def split_at(rec, event):
    """Message ids the recorder got (before, after) `event` (that very object)."""
    pos = next(i for i, e in enumerate(rec.events) if e is event)

    def ids(events):
        return [e.event.Info.ID for e in events if isinstance(e, base.InboundMessage)]

    return ids(rec.events[:pos]), ids(rec.events[pos + 1 :])


def test_unacknowledged_messages_are_redelivered_when_the_client_reconnects(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 5, Recorder(fail_first_message=True))
        first = await inject(sim, 5, **{"from": PHONE}, text="handler fails")
        # Written, then the connection drops before any ack can arrive.
        burst = await inject(sim, 5, **{"from": PHONE}, text="burst", count=3, drop_after=True)
        assert burst["dropped"]
        await rec.wait(base.Disconnected)
        again = await rec.wait(base.Connected, 2)
        ids = first["ids"] + burst["ids"]
        deadline = time.monotonic() + 10
        while sorted(split_at(rec, again)[1]) != sorted(ids):
            assert time.monotonic() < deadline, f"redelivered {split_at(rec, again)} of {ids}"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        await client.stop()
        await t.aclose()
        return ids, rec, again

    ids, rec, again = run(body)
    before, redelivered = split_at(rec, again)
    # The failed one (never acked) and the burst (acks lost) all come again, once.
    assert sorted(redelivered) == sorted(ids)
    # Before the drop the client read the burst in order, all of it or the part it
    # got to before the connection closed (on a slow machine), and acked none.
    assert before == ids[1 : 1 + len(before)]
    assert ("handler failed", ids[0]) in rec.events
    company = sim.company(5)
    assert company["delivered"] == 4 and company["redelivered"] == 4
    assert company["acked"] == 4 and company["queued"] == 0 and company["drops"] == 1


def test_messages_for_an_offline_device_wait_in_its_queue(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, _ = await paired_client(sim, t, 6)
        await client.stop()
        queued = await inject(sim, 6, **{"from": PHONE}, text="while away", count=4)
        assert not queued["online"] and queued["queued"] == 4
        again, rec = await resumed_client(t, 6)
        await rec.wait(base.InboundMessage, 4)
        assert type(rec.events[0]) is base.Connected  # connected first, then the queue
        await asyncio.sleep(0.2)
        await again.stop()
        await t.aclose()
        return queued["ids"], rec.message_ids()

    ids, seen = run(body)
    assert seen == ids  # in order, once each
    company = sim.company(6)
    assert company["delivered"] == 4 and company["redelivered"] == 0 and company["queued"] == 0


def test_sends_are_acknowledged_with_an_id_and_recorded_for_the_receiving_phone(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, rec = await paired_client(sim, t, 7)
        await inject(sim, 7, **{"from": PHONE}, text="hi", mode="lid")
        lid_jid = (await rec.wait(base.InboundMessage)).event.Info.MessageSource.Chat.User
        to_phone = await client.send_text(f"{PHONE}@s.whatsapp.net", "to the phone")
        to_lid = await client.send_text(f"{lid_jid}@lid", "to the lid")
        receipt = await rec.wait(base.Receipt, 2)
        errors = []
        for jid, text in (("not-a-jid", "x"), (f"{PHONE}@s.whatsapp.net", "  ")):
            with pytest.raises(base.TransportError) as err:
                await client.send_text(jid, text)
            errors.append(err.value)
        await client.stop()
        with pytest.raises(base.TransportError) as offline:
            await client.send_text(f"{PHONE}@s.whatsapp.net", "after stop")
        await t.aclose()
        return to_phone, to_lid, receipt, errors, offline.value

    to_phone, to_lid, receipt, errors, offline = run(body)
    assert WEB_ID.match(to_phone) and WEB_ID.match(to_lid) and to_phone != to_lid
    assert receipt.message_ids == (to_lid,) and receipt.kind == "delivered"
    assert all(e.permanent for e in errors) and not offline.permanent
    sends = sim.sends(phone=PHONE)
    assert [(s["id"], s["text"]) for s in sends] == [
        (to_phone, "to the phone"),
        (to_lid, "to the lid"),
    ]
    assert sim.company(7)["sends"] == 2 and sim.sends(company="7", phone="4915100000009") == []


def test_a_resend_with_the_same_id_is_acknowledged_but_the_phone_shows_it_once(sim, tmp_path):
    to = f"{PHONE}@s.whatsapp.net"

    async def body():
        t = transport(sim, tmp_path)
        client, _ = await paired_client(sim, t, 15)
        first = await client.send_text(to, "your table is booked", "3EB0AAAAAAAAAAAAAAAAAA")
        again = await client.send_text(to, "your table is booked", "3EB0AAAAAAAAAAAAAAAAAA")
        other = await client.send_text(to, "your table is booked", "3EB0BBBBBBBBBBBBBBBBBB")
        with pytest.raises(base.TransportError) as bad:
            await client.send_text(to, "x", "3EB0" + "F" * 200)
        await client.stop()
        await t.aclose()
        return first, again, other, bad.value

    first, again, other, bad = run(body)
    assert first == again == "3EB0AAAAAAAAAAAAAAAAAA" and other == "3EB0BBBBBBBBBBBBBBBBBB"
    assert bad.permanent and "message id" in str(bad)
    shown = [(s["id"], s["duplicates"]) for s in sim.sends(phone=PHONE)]
    assert shown == [(first, 1), (other, 0)]  # a new id is a new message, even with one text
    company = sim.company(15)
    assert company["sends"] == 2 and company["duplicate_sends"] == 1
    assert sim.stats()["totals"]["duplicate_sends"] == 1


def test_slow_sends_reach_the_phone_at_once_and_are_acknowledged_late(sim, tmp_path):
    to = f"{PHONE}@s.whatsapp.net"

    async def body():
        t = transport(sim, tmp_path)
        client, _ = await paired_client(sim, t, 16)
        await asyncio.to_thread(sim.post, "slow-sends", company=16, seconds=0.8)
        send = asyncio.create_task(client.send_text(to, "slow one", "3EB0CCCCCCCCCCCCCCCCCC"))
        while not await asyncio.to_thread(sim.sends, phone=PHONE):
            await asyncio.sleep(0.02)
        in_flight = not send.done()  # on the phone, not yet acknowledged
        acked = await send
        quick = await client.send_text(to, "next one")  # count 1: only the first was slow
        await client.stop()
        await t.aclose()
        return in_flight, acked, quick

    in_flight, acked, quick = run(body)
    assert in_flight and acked == "3EB0CCCCCCCCCCCCCCCCCC" and WEB_ID.match(quick)
    with pytest.raises(ControlError) as err:
        sim.post("slow-sends", company=16, seconds=0)
    assert err.value.status == 400 and "seconds" in err.value.body


def test_bad_control_requests_get_a_clear_error_and_queue_nothing(sim, tmp_path):
    async def body():
        t = transport(sim, tmp_path)
        client, _ = await paired_client(sim, t, 14)
        await client.stop()
        await t.aclose()

    run(body)
    before = sim.stats()["totals"].get("injected", 0)
    cases = [
        ({"text": "no company", "from": PHONE}, 400, "company"),
        ({"company": 99, "from": PHONE, "text": "x"}, 404, "company 99 has no paired device"),
        ({"company": 14, "from": "12", "text": "x"}, 400, "not a phone number"),
        ({"company": 14, "from": PHONE, "text": "x", "count": 0}, 400, "count"),
        (
            {"company": 14, "messages": [{"from": PHONE, "text": "ok"}, {"from": PHONE}]},
            400,
            "from (the phone) and text",
        ),
        ({"company": 14, "from": PHONE, "text": "x", "mode": "carrier-pigeon"}, 400, "mode"),
        ({"company": 14, "from": PHONE, "text": "x", "kind": "hologram"}, 400, "kind"),
        ({"company": 14, "from": PHONE, "text": "x", "kind": "reaction"}, 400, "reacts_to"),
    ]
    for body, status, words in cases:
        with pytest.raises(ControlError) as err:
            sim.post("messages", **body)
        assert err.value.status == status and words in err.value.body, (body, err.value)
    for action, body, words in [
        ("ban", {"company": 14, "seconds": "soon"}, "seconds"),
        ("ban", {"company": 14, "seconds": 60, "code": "101"}, "SEND_TO_TOO_MANY_PEOPLE"),
        ("logout", {"company": 14, "reason": "bored"}, "LOGGED_OUT"),
        ("scan", {}, "company"),
    ]:
        with pytest.raises(ControlError) as err:
            sim.post(action, **body)
        assert err.value.status == 400 and words in err.value.body, (action, err.value)
    assert sim.stats()["totals"].get("injected", 0) == before
    company = sim.company(14)
    assert company["queued"] == 0 and company["bans"] == 0 and company["logouts"] == 0


def test_a_connection_must_start_with_hello_and_bad_frames_get_an_error(sim):
    async def body():
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"{sim.url}/ws") as ws:
                await ws.send_str(json.dumps({"type": "send", "to": "x", "text": "y"}))
                error = await ws.receive_json(timeout=5)
                closing = await ws.receive(timeout=5)
            async with http.ws_connect(f"{sim.url}/ws") as ws:
                await ws.send_json({"type": "hello", "company": "15"})
                qr = await ws.receive_json(timeout=5)
                await ws.send_str("not json")
                bad = await ws.receive_json(timeout=5)
                await ws.send_json({"type": "teleport"})
                unknown = await ws.receive_json(timeout=5)
        return error, closing, qr, bad, unknown

    error, closing, qr, bad, unknown = run(body)
    assert error["type"] == "error" and "hello" in error["error"]
    assert closing.type == aiohttp.WSMsgType.CLOSE and closing.data == 4400
    assert qr["type"] == "qr" and bad["type"] == "error" and "teleport" in unknown["error"]
