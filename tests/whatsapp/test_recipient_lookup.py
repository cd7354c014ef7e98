"""Outbound recipients resolved as WhatsApp clients do it (issue 16 c).

A recipient given as a phone number is asked about once per company and
number (whatsmeow's IsOnWhatsApp; the simulator answers the same question),
the answer is kept with a TTL, and the message goes to the JID WhatsApp
answered: a `+52` number whose account lives at WhatsApp's `521...` JID is
sent there. "Not on WhatsApp" is a permanent failure of the row, and, once
known, refused before anything is queued. The worker and the simulator are
the real ones (the simulator served on the test's loop, over loopback).
"""

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async as db
from django.utils import timezone

from whatsapp.models import OutboundMessage, RecipientLookup, SessionState
from whatsapp.services.control import start_session
from whatsapp.services.outbound import NotOnWhatsApp, queue_outbound_message
from whatsapp.services.recipients import record_recipient_answers
from whatsapp.simulator import protocol
from whatsapp.simulator.state import SimulatorState
from whatsapp.transport import base

from .test_worker_simulator import Rig, state_is
from .worker_doubles import (  # noqa: F401  (company_fixture is the `company` fixture)
    company_fixture,
    fast_settings,
    run,
    wait_until,
)

MEXICO = "+525512345678"  # WhatsApp answers 5215512345678@s.whatsapp.net
GERMANY = "+4915112345678"
NOBODY = "+4915199999999"  # not on WhatsApp


# --- units -------------------------------------------------------------------------
def test_answers_are_matched_to_the_asked_numbers_with_or_without_their_plus():
    found = base.match_answers(
        [MEXICO, NOBODY],
        [("+4915199999999", False, ""), ("525512345678", True, "5215512345678@s.whatsapp.net")],
    )
    assert found == {
        MEXICO: base.Recipient(MEXICO, True, "5215512345678@s.whatsapp.net"),
        NOBODY: base.Recipient(NOBODY, False, ""),
    }
    # A lone answer to a lone question is that number's, whatever WhatsApp echoed.
    assert base.match_answers([GERMANY], [("x", True, "4915112345678@s.whatsapp.net")]) == {
        GERMANY: base.Recipient(GERMANY, True, "4915112345678@s.whatsapp.net")
    }
    assert base.match_answers([GERMANY], []) == {}


def test_the_simulator_knows_where_numbers_live():
    sim = SimulatorState()
    sim.set_numbers({MEXICO: "mexican_legacy", NOBODY: None})
    assert sim.where("525512345678") == (True, "5215512345678@s.whatsapp.net")
    assert sim.where("4915199999999") == (False, "")
    assert sim.where("4915112345678") == (True, "4915112345678@s.whatsapp.net")
    sim.set_numbers({MEXICO: True})
    assert sim.where("525512345678") == (True, "525512345678@s.whatsapp.net")
    with pytest.raises(protocol.FrameError):
        sim.set_numbers({GERMANY: "123@g.us"})


def keep(company, phone, on_whatsapp, jid="", ago=0.0):
    answer = base.Recipient(phone, on_whatsapp, jid)
    record_recipient_answers(company.pk, {phone: answer})
    if ago:
        RecipientLookup.objects.filter(company=company, phone=phone).update(
            expires_at=timezone.now() - timedelta(seconds=ago)
        )


def test_a_kept_not_on_whatsapp_answer_refuses_before_anything_is_queued(company):
    keep(company, NOBODY, False)
    with pytest.raises(NotOnWhatsApp, match=r"\+4915199999999 is not on WhatsApp"):
        queue_outbound_message(company.pk, NOBODY, "hello")
    assert not OutboundMessage.objects.exists()
    # An expired answer is asked again: the row is queued for the worker to ask.
    RecipientLookup.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    message, _ = queue_outbound_message(company.pk, NOBODY, "hello")
    assert message.resolve_recipient and message.to_jid == "4915199999999@s.whatsapp.net"


def test_a_kept_jid_is_the_recipient_and_nothing_is_left_to_ask(company):
    keep(company, MEXICO, True, "5215512345678@s.whatsapp.net")
    message, _ = queue_outbound_message(company.pk, "+52 55 1234 5678", "hola", "k1")
    assert (message.to_jid, message.to_phone) == ("5215512345678@s.whatsapp.net", MEXICO)
    assert not message.resolve_recipient
    # The same request again is the same message (no idempotency conflict).
    again, created = queue_outbound_message(company.pk, MEXICO, "hola", "k1")
    assert (again.pk, created) == (message.pk, False)


def test_a_jid_recipient_is_whatsapps_own_and_never_asked_about(company):
    message, _ = queue_outbound_message(company.pk, "5215512345678@s.whatsapp.net", "hola")
    assert not message.resolve_recipient
    assert message.to_jid == "5215512345678@s.whatsapp.net"


def test_answers_are_kept_per_company_with_their_ttl(company, settings):
    settings.WHATSAPP = {**settings.WHATSAPP, "RECIPIENT_TTL": 100, "RECIPIENT_NEGATIVE_TTL": 10}
    keep(company, GERMANY, True, "4915112345678@s.whatsapp.net")
    keep(company, NOBODY, False)
    rows = {r.phone: r for r in RecipientLookup.objects.all()}
    assert 99 < (rows[GERMANY].expires_at - rows[GERMANY].checked_at).total_seconds() <= 100
    assert 9 < (rows[NOBODY].expires_at - rows[NOBODY].checked_at).total_seconds() <= 10
    keep(company, NOBODY, True, "4915199999999@s.whatsapp.net")  # joined meanwhile
    assert RecipientLookup.objects.get(phone=NOBODY).on_whatsapp
    assert RecipientLookup.objects.count() == 2


# --- the worker and the simulator ------------------------------------------------------
pytestmark_worker = pytest.mark.django_db(transaction=True, databases="__all__")


@pytest.fixture
def rig(company, settings, tmp_path):
    fast_settings(settings, tmp_path)
    start_session(company.pk)
    return Rig(tmp_path)


def status_of(pk):
    return OutboundMessage.objects.values_list("status", "last_error").get(pk=pk)


@pytestmark_worker
def test_the_worker_asks_once_and_sends_to_the_jid_whatsapp_answered(rig, company):
    async def scenario():
        async with rig:
            rig.sim.set_numbers({MEXICO: "mexican_legacy"})
            await rig.supervisor()
            await rig.pair(company)
            first, _ = await db(queue_outbound_message)(company.pk, MEXICO, "hola")
            assert first.resolve_recipient and first.to_jid == "525512345678@s.whatsapp.net"
            await wait_until(
                lambda: OutboundMessage.objects.filter(pk=first.pk, status="delivered").exists(),
                what="delivered",
            )
            second, _ = await db(queue_outbound_message)(company.pk, MEXICO, "otra vez")
            await wait_until(
                lambda: OutboundMessage.objects.filter(pk=second.pk, status="delivered").exists(),
                what="second delivered",
            )
            return first.pk, second

    first_pk, second = run(scenario)
    sends = rig.sim.sends
    assert [(s["to"], s["text"], s["reached"]) for s in sends] == [
        ("5215512345678@s.whatsapp.net", "hola", True),
        ("5215512345678@s.whatsapp.net", "otra vez", True),
    ]
    assert rig.sim.totals["lookups"] == 1  # the second message used the kept answer
    assert rig.sim.totals["sends_unreached"] == 0
    first = OutboundMessage.objects.get(pk=first_pk)
    assert (first.to_jid, first.to_phone, first.resolve_recipient) == (
        "5215512345678@s.whatsapp.net",
        MEXICO,
        False,
    )
    # Known before it was queued: it went to WhatsApp's JID without asking.
    assert not second.resolve_recipient and second.to_jid == "5215512345678@s.whatsapp.net"
    lookup = RecipientLookup.objects.get(company=company, phone=MEXICO)
    assert (lookup.on_whatsapp, lookup.jid) == (True, "5215512345678@s.whatsapp.net")


@pytestmark_worker
def test_not_on_whatsapp_fails_the_row_for_good_and_then_is_refused_up_front(rig, company):
    async def scenario():
        async with rig:
            rig.sim.set_numbers({NOBODY: None})
            await rig.supervisor()
            await rig.pair(company)
            message, _ = await db(queue_outbound_message)(company.pk, NOBODY, "hello?")
            await wait_until(
                lambda: OutboundMessage.objects.filter(pk=message.pk, status="failed").exists(),
                what="failed",
            )
            with pytest.raises(NotOnWhatsApp):
                await db(queue_outbound_message)(company.pk, NOBODY, "hello again?")
            # Someone else is reachable as usual meanwhile.
            other, _ = await db(queue_outbound_message)(company.pk, GERMANY, "hi")
            await wait_until(
                lambda: OutboundMessage.objects.filter(pk=other.pk, status="delivered").exists(),
                what="delivered",
            )
            return message.pk

    pk = run(scenario)
    status, error = status_of(pk)
    assert status == "failed"
    assert error == "+4915199999999 is not on WhatsApp (permanent)"
    assert OutboundMessage.objects.get(pk=pk).attempts == 1
    assert [s["to"] for s in rig.sim.sends] == ["4915112345678@s.whatsapp.net"]
    assert OutboundMessage.objects.count() == 2
    assert rig.sim.totals["lookups"] == 2


@pytestmark_worker
def test_without_resolving_a_mexican_number_would_be_sent_where_nobody_reads(rig, company):
    """The simulator's side of the bug: the +52 JID of a 521 account is not reached
    (no delivery receipt). A JID given explicitly is WhatsApp's own: sent as is."""

    async def scenario():
        async with rig:
            rig.sim.set_numbers({MEXICO: "mexican_legacy"})
            await rig.supervisor()
            await rig.pair(company)
            await wait_until(state_is(company, SessionState.CONNECTED), what="connected")
            message, _ = await db(queue_outbound_message)(
                company.pk, "525512345678@s.whatsapp.net", "perdido"
            )
            await wait_until(
                lambda: OutboundMessage.objects.filter(pk=message.pk, status="sent").exists(),
                what="sent",
            )

    run(scenario)
    assert [(s["to"], s["reached"]) for s in rig.sim.sends] == [
        ("525512345678@s.whatsapp.net", False)
    ]
    assert rig.sim.totals["lookups"] == 0
    assert rig.sim.totals["sends_unreached"] == 1
