"""One WhatsApp message, exactly one row, one job and one queued task, however
often and from however many threads or processes it is delivered.

Real commits (transaction=True): the concurrency cases need them, and with the
Redis broker the enqueue happens on commit. Both passes run every test: the
embedded default (SQLite file, ORM broker) and PostgreSQL + Redis.
"""

import json
import subprocess
import sys
import threading
import time

import pytest
from django.db import connection, connections

from companies.models import Company
from tests.e2e_processes import ROOT, db_env
from tests.whatsapp.job_queue import inbound_tasks, purge
from whatsapp.models import InboundMessage, OutboundMessage, ProcessingJob, WhatsAppSession
from whatsapp.services.inbound import InboundOutcome, UnknownCompany, record_inbound_message
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

pytestmark = pytest.mark.django_db(transaction=True)

PHONE = "491701234567@s.whatsapp.net"


@pytest.fixture(autouse=True)
def empty_queue():
    purge()
    yield
    purge()


@pytest.fixture
def session(company):
    return WhatsAppSession.objects.create(company=company)


def event(message_id="3EB0AAAA0001", text="hello"):
    return normalize_message(message_event(message_id, PHONE, text, push_name="Anna"))


def assert_exactly_one(company, copies, message_id="3EB0AAAA0001"):
    """One row, one job, one queued task for it; every other copy counted."""
    row = InboundMessage.objects.get(company=company, wa_message_id=message_id)
    assert InboundMessage.objects.filter(company=company).count() == 1
    job = ProcessingJob.objects.get(message=row)
    assert ProcessingJob.objects.count() == 1
    assert inbound_tasks() == [("whatsapp.tasks.process_message_job", (row.pk,))]
    assert job.status == ProcessingJob.Status.QUEUED
    assert job.enqueue_count == 1
    assert job.task_id
    assert row.redeliveries == copies - 1
    session = WhatsAppSession.objects.get(company=company)
    assert session.messages_in == 1
    assert session.duplicates_blocked == copies - 1
    assert session.last_event_at is not None
    return row, job


@pytest.mark.parametrize("copies", [2, 3, 50])
def test_it_keeps_one_message_one_job_and_one_task_when_delivered_again_and_again(
    company, session, copies
):
    outcomes = [record_inbound_message(company.pk, event()) for _ in range(copies)]
    assert outcomes[0].created
    assert outcomes[0].message_pk is not None
    assert [o.status for o in outcomes[1:]] == [InboundOutcome.DUPLICATE] * (copies - 1)
    row, _ = assert_exactly_one(company, copies)
    assert outcomes[0].message_pk == row.pk
    assert (row.text, row.push_name, row.sender_phone) == ("hello", "Anna", "+491701234567")


def test_a_redelivery_keeps_the_first_copy_of_the_message(company, session):
    record_inbound_message(company.pk, event(text="first"))
    record_inbound_message(company.pk, event(text="second (a replay with other text)"))
    row, _ = assert_exactly_one(company, 2)
    assert row.text == "first"


def test_the_same_message_id_in_two_companies_is_two_messages(tenants):
    for company in (tenants.a, tenants.b):
        WhatsAppSession.objects.create(company=company)
        assert record_inbound_message(company.pk, event()).created
    assert InboundMessage.objects.count() == 2
    assert ProcessingJob.objects.count() == 2
    assert len(inbound_tasks()) == 2


def test_eight_threads_delivering_at_once_create_one_message_and_one_job(company, session):
    copies_per_thread, threads = 3, 8
    barrier = threading.Barrier(threads)
    outcomes, errors = [], []

    def deliver():
        try:
            barrier.wait(timeout=30)
            for _ in range(copies_per_thread):
                outcomes.append(record_inbound_message(company.pk, event()).status)
        except Exception as exc:  # reported below, with the thread's error
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=deliver) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=120)
    assert not errors, errors
    total = threads * copies_per_thread
    assert outcomes.count(InboundOutcome.CREATED) == 1
    assert outcomes.count(InboundOutcome.DUPLICATE) == total - 1
    assert_exactly_one(company, total)


@pytest.mark.e2e
def test_two_processes_delivering_at_once_create_one_message_and_one_job(
    company, session, tmp_path
):
    copies = 25
    connections.close_all()  # the children open their own connections
    env = db_env(tmp_path)
    start_at = time.time() + 4.0  # both have imported Django by then, even under load
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.whatsapp.inbound_deliverer",
                str(company.pk),
                "3EB0AAAA0001",
                str(copies),
                str(start_at),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err[-3000:]
        outcomes += json.loads(out.strip().splitlines()[-1])
    assert outcomes.count(InboundOutcome.CREATED) == 1
    assert outcomes.count(InboundOutcome.DUPLICATE) == 2 * copies - 1
    assert_exactly_one(company, 2 * copies)


def test_an_unknown_company_is_a_clear_error_and_stores_nothing(company, session):
    missing = Company.objects.order_by("-pk").first().pk + 1000
    with pytest.raises(UnknownCompany, match=f"company {missing} does not exist"):
        record_inbound_message(missing, event())
    assert InboundMessage.objects.count() == 0
    assert ProcessingJob.objects.count() == 0
    assert inbound_tasks() == []
    # ...and the company that exists still records the same message.
    assert record_inbound_message(company.pk, event()).created
    assert_exactly_one(company, 1)


def test_a_message_typed_on_the_own_phone_is_a_person_reply_without_a_job(company, session):
    own = normalize_message(message_event("3EB0OWN", PHONE, "from the salon", from_me=True))
    outcome = record_inbound_message(company.pk, own)
    assert outcome.status == InboundOutcome.BY_PERSON
    assert InboundMessage.objects.count() == 0
    reply = OutboundMessage.objects.get(wa_message_id="3EB0OWN")
    assert (reply.author, reply.status, reply.text) == ("phone", "sent", "from the salon")
    assert record_inbound_message(company.pk, own).status == InboundOutcome.DUPLICATE
    assert OutboundMessage.objects.count() == 1
    assert inbound_tasks() == []
    assert WhatsAppSession.objects.get(pk=session.pk).last_event_at is not None


def test_a_message_that_is_not_a_client_message_is_ignored_without_a_job(company, session):
    reaction = normalize_message(
        message_event("3EB0OWN", PHONE, "", from_me=True, is_edit=True)
    )
    outcome = record_inbound_message(company.pk, reaction)
    assert outcome.status == InboundOutcome.IGNORED
    assert InboundMessage.objects.count() == 0
    assert OutboundMessage.objects.count() == 0
    assert inbound_tasks() == []
    assert WhatsAppSession.objects.get(pk=session.pk).last_event_at is not None


def test_it_refuses_anything_but_a_normalised_message(company, session):
    with pytest.raises(TypeError, match="NormalizedMessage"):
        record_inbound_message(company.pk, message_event("3EB0RAW", PHONE, "raw"))
    assert InboundMessage.objects.count() == 0


def test_a_message_with_nul_characters_is_stored_without_them(company, session):
    record_inbound_message(
        company.pk, normalize_message(message_event("3EB0NUL", PHONE, "a\x00b", push_name="A\x00n"))
    )
    row = InboundMessage.objects.get()
    assert (row.text, row.push_name) == ("ab", "An")


@pytest.mark.parametrize("with_session", [True, False], ids=["session", "no session row"])
def test_a_company_with_a_webhook_endpoint_gets_one_event_per_message(tenants, with_session):
    from whatsapp.models import WebhookDelivery, WebhookEndpoint

    if with_session:
        WhatsAppSession.objects.create(company=tenants.a)
    WebhookEndpoint.objects.create(company=tenants.a, url="http://127.0.0.1:9/a")
    WebhookEndpoint.objects.create(company=tenants.b, url="http://127.0.0.1:9/b")
    WebhookEndpoint.objects.create(company=tenants.b, url="http://127.0.0.1:9/c", is_active=False)
    for _ in range(3):
        record_inbound_message(tenants.a.pk, event())
    record_inbound_message(tenants.b.pk, event("3EB0BBBB"))
    record_inbound_message(tenants.b.pk, event("3EB0BBBB"))
    deliveries = list(WebhookDelivery.objects.order_by("company_id"))
    assert [(d.company_id, d.event_type) for d in deliveries] == [
        (tenants.a.pk, "message.received"),
        (tenants.b.pk, "message.received"),
    ]
    assert deliveries[0].payload["message"]["id"] == "3EB0AAAA0001"


def test_a_company_without_active_endpoints_gets_no_event(company, session):
    from whatsapp.models import WebhookDelivery, WebhookEndpoint

    WebhookEndpoint.objects.create(company=company, url="http://127.0.0.1:9/a", is_active=False)
    record_inbound_message(company.pk, event())
    assert not WebhookDelivery.objects.exists()
