"""Privacy: "forget this contact" deletes their messages, jobs, chats and
data; retention clears message texts older than the company's N days and
keeps the rows (counts)."""

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.e2e_processes import wait_for
from whatsapp.models import Chat, Contact, InboundMessage, OutboundMessage, ProcessingJob
from whatsapp.services.conversations import delete_expired_message_bodies, forget_contact

from .helpers import client_writes, phone_writes, setup_company, sim_writes, wait_job, wait_replies

OTHER = "4917099887766@s.whatsapp.net"


def test_forget_deletes_the_contact_with_everything_of_theirs_and_nothing_else(company, tenants):
    setup_company(company)
    setup_company(tenants.b)
    client_writes(company, "M1", "hi")
    phone_writes(company, "P1", "hello from the desk")
    client_writes(company, "M2", "ok")
    client_writes(company, "O1", "another client", chat=OTHER)
    client_writes(tenants.b, "M1", "hi")  # the same person at another company
    contact = Contact.objects.get(company=company, phone_jid__startswith="49151")

    counts = forget_contact(contact)

    # M1's reply and the phone's message (M2 came while a person had the chat)
    assert counts == {"inbound": 2, "outbound": 2, "chats": 1}
    assert not Contact.objects.filter(pk=contact.pk).exists()
    assert list(
        InboundMessage.objects.filter(company=company).values_list("chat_jid", flat=True)
    ) == [OTHER]
    assert OutboundMessage.objects.filter(company=company).count() == 1  # O1's reply
    assert ProcessingJob.objects.filter(message__company=company).count() == 1
    assert Chat.objects.filter(company=company).count() == 1
    assert InboundMessage.objects.filter(company=tenants.b).count() == 1  # B untouched
    assert Contact.objects.filter(company=tenants.b).count() == 1


def test_retention_clears_old_texts_and_keeps_the_rows(company, tenants):
    setup_company(company)
    setup_company(tenants.b)
    company.message_retention_days = 30
    company.save()
    old = client_writes(company, "OLD", "my address is ...")
    client_writes(tenants.b, "B-OLD", "kept: no retention at B")
    long_ago = timezone.now() - timedelta(days=31)
    InboundMessage.objects.filter(wa_message_id__in=["OLD", "B-OLD"]).update(received_at=long_ago)
    OutboundMessage.objects.filter(in_reply_to=old).update(created_at=long_ago)
    fresh = client_writes(company, "NEW", "hello")

    assert delete_expired_message_bodies() == 2
    old.refresh_from_db()
    assert old.text == "" and old.body_deleted_at is not None
    assert OutboundMessage.objects.get(in_reply_to=old).text == ""
    assert InboundMessage.objects.get(pk=fresh.pk).text == "hello"
    assert InboundMessage.objects.get(wa_message_id="B-OLD").text == "kept: no retention at B"
    assert InboundMessage.objects.filter(company=company).count() == 2  # counts kept
    assert delete_expired_message_bodies() == 0


def test_retention_runs_as_a_scheduled_maintenance_task(company):
    import io

    from django.core.management import call_command
    from django_q.models import Schedule

    from whatsapp.tasks import delete_expired_messages

    call_command("setup_defaults", stdout=io.StringIO())
    schedule = Schedule.objects.get(func="whatsapp.tasks.delete_expired_messages")
    assert schedule.repeats == -1 and schedule.minutes == 60
    setup_company(company)
    company.message_retention_days = 1
    company.save()
    client_writes(company, "OLD", "old text")
    InboundMessage.objects.update(received_at=timezone.now() - timedelta(days=2))
    assert delete_expired_messages() == "cleared 1 message texts past retention"


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_on_the_simulator_forget_deletes_the_conversation(live):
    sim, app, company = live
    first = sim_writes(sim, company, "my name is Anna, my address is ...")
    wait_job(first, app)
    wait_replies(sim, company, 1)
    wait_for(
        lambda: OutboundMessage.objects.filter(status__in=["sent", "delivered"]).exists(),
        30,
        "the reply sent",
    )
    contact = Contact.objects.get()
    assert forget_contact(contact) == {"inbound": 1, "outbound": 1, "chats": 1}
    assert not InboundMessage.objects.exists() and not OutboundMessage.objects.exists()
    assert not Chat.objects.exists() and not Contact.objects.exists()
    assert not ProcessingJob.objects.exists()
    # The same person writing again starts from scratch.
    second = sim_writes(sim, company, "hello again")
    wait_job(second, app)
    assert Contact.objects.count() == 1  # a new contact, from scratch
