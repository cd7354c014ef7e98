"""Records the system writes are read-only in the admin, for superusers too:
jobs, inbound messages, connection events, leases, worker processes."""

import pytest
from django.utils import timezone

from whatsapp.models import (
    ConnectionEvent,
    InboundMessage,
    ProcessingJob,
    SessionLease,
    WorkerProcess,
)

from .conftest import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def records(tenants, sessions):
    a, _ = sessions
    message = InboundMessage.objects.create(
        company=tenants.a,
        wa_message_id="3EB0READONLY",
        chat_jid="4915112345678@s.whatsapp.net",
        sender_jid="4915112345678@s.whatsapp.net",
        sender_phone="+4915112345678",
        text="hello",
        sent_at=timezone.now(),
    )
    job = ProcessingJob.objects.create(message=message, status=ProcessingJob.Status.SUCCEEDED)
    event = ConnectionEvent.objects.create(session=a, kind="connected", state="connected")
    worker = WorkerProcess.objects.create(worker_id="vm.1.abc", hostname="vm", pid=1)
    return [message, job, event, SessionLease.objects.get(session=a), worker]


def url(obj, view):
    meta = obj._meta
    base = f"/admin/{meta.app_label}/{meta.model_name}/"
    return base + ("add/" if view == "add" else f"{obj.pk}/{view}/")


def test_nobody_adds_changes_or_deletes_a_system_record(client, tenants, records):
    login(client, tenants.superuser)
    for obj in records:
        name = obj._meta.model_name
        assert client.get(url(obj, "add")).status_code == 403, name
        page = client.get(url(obj, "change"))
        assert page.status_code == 200, name
        html = page.content.decode()
        assert 'name="_save"' not in html and "deletelink" not in html, name
        assert client.post(url(obj, "change"), {}).status_code == 403, name
        assert client.post(url(obj, "delete"), {"post": "yes"}).status_code == 403, name
        assert type(obj).objects.filter(pk=obj.pk).exists(), name
        listing = client.get(f"/admin/whatsapp/{name}/").content.decode()
        assert f"/admin/whatsapp/{name}/add/" not in listing, name
    job = records[1]
    job.refresh_from_db()
    assert job.status == ProcessingJob.Status.SUCCEEDED
