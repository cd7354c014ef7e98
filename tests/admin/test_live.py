"""Live updates: the staff WebSocket (through the real ASGI stack: origin
check, session auth, URL routing) and the publishing done by the services.

A state change written by the worker's own transition service reaches the
browsers of the company's staff and of superusers, and nobody else's."""

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.test import Client

from aiadmin.asgi import application
from companies.models import Membership
from whatsapp.models import SessionLease
from whatsapp.services import control
from whatsapp.services import sessions as svc
from whatsapp.services.leases import try_acquire
from whatsapp.worker.supervisor import SessionSupervisor

from ..whatsapp.worker_doubles import ScriptedTransport, fast_settings, run

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
PATH = "/ws/admin/whatsapp/"
JID = "491701234567:7@s.whatsapp.net"
db = database_sync_to_async


def cookie_for(user):
    client = Client()
    client.force_login(user)
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def socket(user=None, origin=b"http://testserver"):
    headers = [(b"origin", origin)]
    if user is not None:
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie_for(user)}".encode()))
    return WebsocketCommunicator(application, PATH, headers=headers)


def hint(company, state):
    return {"event": "session.changed", "company_id": company.pk, "state": state}


def test_a_transition_reaches_the_staff_of_that_company_only(tenants, sessions):
    a, b = sessions
    owner, other = socket(tenants.owner), socket(tenants.other_owner)

    async def body():
        assert (await owner.connect())[0] and (await other.connect())[0]
        held = await db(try_acquire)("test-worker", a.pk)
        assert await db(svc.mark_connected)(held, jid=JID)
        assert await owner.receive_json_from(timeout=10) == hint(tenants.a, "connected")
        assert await other.receive_nothing(timeout=1.0)
        await owner.disconnect()
        await other.disconnect()

    run(body)


def test_a_superuser_hears_about_every_company(tenants, sessions):
    a, b = sessions
    root = socket(tenants.superuser)

    async def body():
        assert (await root.connect())[0]
        for session, company in [(a, tenants.a), (b, tenants.b)]:
            held = await db(try_acquire)("test-worker", session.pk)
            await db(svc.mark_starting)(held)
            assert await root.receive_json_from(timeout=10) == hint(company, "starting")
        await root.disconnect()

    run(body)


def test_a_rotated_qr_code_and_an_operator_command_are_published(tenants, sessions):
    a, _ = sessions
    owner = socket(tenants.owner)

    async def body():
        assert (await owner.connect())[0]
        held = await db(try_acquire)("test-worker", a.pk)
        await db(svc.mark_awaiting_pairing)(held, "2@first,qr", record=True)
        assert await owner.receive_json_from(timeout=10) == hint(tenants.a, "awaiting_pairing")
        # A rotation records no event but still changes what the page shows.
        await db(svc.mark_awaiting_pairing)(held, "2@second,qr", record=False)
        assert await owner.receive_json_from(timeout=10) == hint(tenants.a, "awaiting_pairing")
        await db(control.restart_session)(tenants.a.pk)
        assert (await owner.receive_json_from(timeout=10))["company_id"] == tenants.a.pk
        await owner.disconnect()

    run(body)


def test_nothing_is_published_for_a_rolled_back_change(tenants, sessions):
    a, _ = sessions
    owner = socket(tenants.owner)

    def failing_transition(held):
        with transaction.atomic():
            svc.mark_connected(held, jid=JID)
            raise RuntimeError("boom")

    async def body():
        assert (await owner.connect())[0]
        held = await db(try_acquire)("test-worker", a.pk)
        with pytest.raises(RuntimeError):
            await db(failing_transition)(held)
        assert await owner.receive_nothing(timeout=1.0)
        await owner.disconnect()

    run(body)


def test_a_removed_membership_stops_the_hints_at_once(tenants, sessions):
    a, _ = sessions
    member = socket(tenants.member)

    async def body():
        assert (await member.connect())[0]
        await db(Membership.objects.filter(user=tenants.member).delete)()
        held = await db(try_acquire)("test-worker", a.pk)
        await db(svc.mark_connected)(held, jid=JID)
        assert await member.receive_nothing(timeout=1.5)
        await member.disconnect()

    run(body)


def test_it_validates_ownership(tenants, sessions):
    not_staff = get_user_model().objects.create_user("clerk", password="pw-clerk-123!")
    Membership.objects.create(company=tenants.a, user=not_staff)
    refused = {
        "anonymous": socket(None),
        "not staff": socket(not_staff),
        "staff of no company": socket(tenants.outsider),
        "foreign origin": socket(tenants.owner, origin=b"http://evil.example"),
    }
    other = socket(tenants.other_owner)

    async def body():
        for who, communicator in refused.items():
            connected, _ = await communicator.connect()
            assert not connected, who
        # The owner of B joined B's group only: A's change never reaches them.
        assert (await other.connect())[0]
        held = await db(try_acquire)("test-worker", sessions[0].pk)
        await db(svc.mark_connected)(held, jid=JID)
        assert await other.receive_nothing(timeout=1.0)
        await other.disconnect()

    run(body)


def test_a_down_channel_layer_never_fails_the_change(tenants, sessions, settings, caplog):
    a, _ = sessions
    settings.CHANNEL_LAYERS = {  # a Redis nobody listens on: the real failure
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1", "socket_timeout": 2}]},
        }
    }
    held = try_acquire("test-worker", a.pk)
    assert svc.mark_connected(held, jid=JID)
    a.refresh_from_db()
    assert a.state == "connected" and a.jid == JID
    assert "could not publish session.changed" in caplog.text


def test_a_worker_handing_over_tells_the_staff_after_the_leases_are_free(
    tenants, sessions, settings, tmp_path
):
    a, _ = sessions
    fast_settings(settings, tmp_path)
    control.start_session(tenants.a.pk)
    owner = socket(tenants.owner)
    sup = SessionSupervisor(worker_id="w-live", transport=ScriptedTransport())

    async def body():
        assert (await owner.connect())[0]
        await sup.start()
        while (await owner.receive_json_from(timeout=10))["state"] != "connected":
            pass  # starting, then connected
        await sup.shutdown("worker stopping")
        assert await owner.receive_json_from(timeout=10) == hint(tenants.a, "stopped")
        lease = await db(SessionLease.objects.get)(session=a)
        assert lease.owner == ""
        await owner.disconnect()

    run(body)


def test_whatever_a_browser_sends_is_ignored_and_the_socket_stays_open(tenants, sessions):
    a, _ = sessions
    owner = socket(tenants.owner)

    async def body():
        assert (await owner.connect())[0]
        await owner.send_to(text_data="not json{{{")
        await owner.send_to(text_data='{"subscribe": "company.2"}')
        await owner.send_to(bytes_data=b"\xff\xfe")
        held = await db(try_acquire)("test-worker", a.pk)
        assert await db(svc.mark_connected)(held, jid=JID)
        assert await owner.receive_json_from(timeout=10) == hint(tenants.a, "connected")
        await owner.disconnect()

    run(body)


@pytest.mark.parametrize("path", ["/ws/nowhere/", "/ws/admin/whatsapp/\x00/", "/"])
def test_an_unknown_websocket_path_is_refused_at_the_handshake(tenants, path):
    cookie = f"{settings.SESSION_COOKIE_NAME}={cookie_for(tenants.owner)}"
    headers = [(b"origin", b"http://testserver"), (b"cookie", cookie.encode())]
    communicator = WebsocketCommunicator(application, path, headers=headers)

    async def body():
        connected, _ = await communicator.connect()
        assert not connected

    run(body)
