"""End to end, real processes: the WhatsApp simulator, two `runworker whatsapp`
and a `qcluster`, on the test database (the embedded default in the SQLite
pass, PostgreSQL + Redis in the production pass).

N messages from M simulated phones to K companies, written as WhatsApp would
deliver them (phone JIDs, device suffixes, LIDs), with connection drops forced
in the middle of the stream so that messages the workers already stored come
again. Expected, and checked from the database and the simulator's counters:

* exactly N InboundMessage rows and N succeeded processing jobs (status
  updates sent afterwards are acknowledged but neither stored nor answered);
* exactly N auto-replies received by the simulator, each by the phone that
  wrote the message it answers (the reply names the phone's push name);
* every redelivery blocked and counted: the simulator's redeliveries equal the
  rows' `redeliveries` and the sessions' `duplicates_blocked`, and are > 0;
* no 440 conflict: one live connection per company throughout.

And the way back from an operator: a text sent through the REST API served by
a real daphne process, twice with one Idempotency-Key, reaches the phone once
through the worker that owns the company, and its status reads "delivered".
"""

import time
from collections import Counter, defaultdict
from itertools import zip_longest

import pytest
from django.db.models import Sum

from companies.models import Company
from tests.e2e_processes import (
    AppProcesses,
    Simulator,
    pair_companies,
    wait_connected,
    wait_for,
)
from whatsapp.models import (
    AutoReplyRule,
    InboundMessage,
    OutboundMessage,
    ProcessingJob,
    WhatsAppSession,
)
from whatsapp.services.control import start_session

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]

N_MESSAGES = 200
N_PHONES = 10
MODES = ("phone", "device", "lid")
BATCH = 8
DROP_EVERY = 7  # every 7th batch ends with a connection drop (acks in flight are lost)


@pytest.fixture
def flow(tmp_path):
    sim = Simulator(tmp_path).start()
    app = AppProcesses(
        tmp_path,
        sim,
        WHATSAPP_LEASE_TTL=10,
        WHATSAPP_RECONCILE_INTERVAL=1,
        WHATSAPP_BACKOFF_BASE=1,
        WHATSAPP_BACKOFF_CAP=5,
        WHATSAPP_SHUTDOWN_GRACE=8,
    )
    yield sim, app
    app.stop_all()
    sim.stop()


def make_companies(tenants):
    third = Company.objects.create(name="Clinic Gamma", slug="gamma")
    companies = [tenants.a, tenants.b, third]
    for company in companies:
        AutoReplyRule.objects.create(
            company=company,
            match=AutoReplyRule.Match.ANY,
            reply_text=f"{company.name} thanks you, {{name}}",
        )
        start_session(company.pk, actor="e2e test")
    return companies


def phone(i):
    return f"4915190{i:06d}"


def stream(companies):
    """N messages: (company id, message spec), phones, sender modes and kinds interleaved."""
    items = []
    for i in range(N_MESSAGES):
        company = companies[i % len(companies)]
        p = i % N_PHONES
        items.append(
            (
                company.pk,
                {
                    "from": phone(p),
                    "push_name": f"Phone {p}",
                    "text": f"message {i}",
                    "mode": MODES[(i // len(companies)) % len(MODES)],
                    "kind": "image" if i % 10 == 0 else "text",  # a photo with a caption
                },
            )
        )
    return items


def send_stream(sim, items):
    """Post the stream in batches per company; some batches end in a drop."""
    by_company = defaultdict(list)
    for company_id, spec in items:
        by_company[company_id].append(spec)
    per_company = [
        [(company_id, specs[i : i + BATCH]) for i in range(0, len(specs), BATCH)]
        for company_id, specs in by_company.items()
    ]
    # Interleave the companies' batches, as many phones writing at once would.
    batches = [b for group in zip_longest(*per_company) for b in group if b]
    drops = 0
    for number, (company_id, specs) in enumerate(batches, start=1):
        drop = number % DROP_EVERY == 0
        answer = sim.post("messages", company=company_id, messages=specs, drop_after=drop)
        drops += int(answer["dropped"])
        time.sleep(0.15)
    return drops


def test_every_message_is_stored_processed_and_answered_once_despite_redeliveries(flow, tenants):
    sim, app = flow
    companies = make_companies(tenants)
    ids = [c.pk for c in companies]
    app.start_workers("w1", "w2")
    app.start_qcluster()
    pair_companies(sim, ids, app)

    items = stream(companies)
    started = time.monotonic()
    drops = send_stream(sim, items)
    try:
        wait_for(
            lambda: (
                len(sim.sends()) >= N_MESSAGES
                and ProcessingJob.objects.filter(status=ProcessingJob.Status.SUCCEEDED).count()
                >= N_MESSAGES
            ),
            180,
            "every message processed and answered",
            interval=0.5,
        )
    except AssertionError:
        print(summary(sim, ids, drops, time.monotonic() - started))
        print(app.logs())
        raise
    wait_connected(ids, app, "every company connected again after the drops")
    # Status updates of the same phones: delivered and acknowledged, never stored.
    for company_id in ids:
        statuses = [{"from": phone(p), "text": "my status", "mode": "status"} for p in range(3)]
        sim.post("messages", company=company_id, messages=statuses)
    total = N_MESSAGES + 3 * len(ids)
    wait_for(lambda: sim.stats()["totals"].get("acked", 0) == total, 60, "statuses acked")
    time.sleep(1.5)  # anything late (a duplicate reply, a stray redelivery) shows up now
    took = time.monotonic() - started
    print(summary(sim, ids, drops, took))

    # Exactly N stored (the statuses ignored), N jobs, all succeeded.
    assert stats_total(sim, "delivered") == total and stats_total(sim, "acked") == total
    assert InboundMessage.objects.count() == N_MESSAGES
    assert ProcessingJob.objects.count() == N_MESSAGES
    assert ProcessingJob.objects.filter(status=ProcessingJob.Status.SUCCEEDED).count() == (
        N_MESSAGES
    )
    assert InboundMessage.objects.filter(kind="image").count() == N_MESSAGES // 10
    expected = Counter(company_id for company_id, _ in items)
    stored = Counter(InboundMessage.objects.values_list("company_id", flat=True))
    assert stored == expected

    # Exactly N replies received, each by the phone that wrote, from the right company.
    sends = sim.sends()
    assert len(sends) == N_MESSAGES, f"{len(sends)} replies for {N_MESSAGES} messages"
    assert len({s["id"] for s in sends}) == N_MESSAGES
    name_of = {c.pk: c.name for c in companies}
    wrote = Counter((company_id, spec["from"]) for company_id, spec in items)
    received = Counter((int(s["company"]), s["phone"]) for s in sends)
    assert received == wrote
    for s in sends:
        p = int(s["phone"][-6:])
        assert s["text"] == f"{name_of[int(s['company'])]} thanks you, Phone {p}", s
    assert OutboundMessage.objects.exclude(status__in=["sent", "delivered", "read"]).count() == 0
    assert OutboundMessage.objects.count() == N_MESSAGES

    # Every redelivery blocked and counted, on both sides.
    stats = sim.stats()
    redelivered = stats["totals"].get("redelivered", 0)
    blocked_rows = InboundMessage.objects.aggregate(n=Sum("redeliveries"))["n"] or 0
    blocked_sessions = WhatsAppSession.objects.aggregate(n=Sum("duplicates_blocked"))["n"] or 0
    assert drops > 0 and redelivered > 0
    assert redelivered == blocked_rows == blocked_sessions
    assert WhatsAppSession.objects.aggregate(n=Sum("messages_in"))["n"] == N_MESSAGES

    # One live connection per company all along: reconnects, never a conflict.
    assert stats["totals"].get("conflicts", 0) == 0
    assert sum(WhatsAppSession.objects.values_list("conflict_count", flat=True)) == 0
    assert sum(WhatsAppSession.objects.values_list("reconnect_count", flat=True)) >= drops


def stats_total(sim, name):
    return sim.stats()["totals"].get(name, 0)


def summary(sim, ids, drops, took):
    stats = sim.stats()
    totals = stats["totals"]
    rows = InboundMessage.objects.count()
    jobs = Counter(ProcessingJob.objects.values_list("status", flat=True))
    blocked = WhatsAppSession.objects.aggregate(n=Sum("duplicates_blocked"))["n"] or 0
    lines = [
        f"message flow: {N_MESSAGES} messages from {N_PHONES} phones to {len(ids)} companies "
        f"in {took:.1f}s",
        f"  simulator: delivered {totals.get('delivered', 0)}, redelivered "
        f"{totals.get('redelivered', 0)}, acked {totals.get('acked', 0)}, drops {drops}, "
        f"connections {totals.get('connections', 0)}, conflicts {totals.get('conflicts', 0)}, "
        f"replies received {totals.get('sends', 0)}",
        f"  database: {rows} messages stored, jobs {dict(jobs)}, duplicates blocked {blocked}, "
        f"outbound {dict(Counter(OutboundMessage.objects.values_list('status', flat=True)))}",
    ]
    for company_id in ids:
        row = stats["companies"].get(str(company_id), {})
        lines.append(
            f"  company {company_id}: connections {row.get('connections', 0)}, "
            f"delivered {row.get('delivered', 0)}, redelivered {row.get('redelivered', 0)}, "
            f"replies {row.get('sends', 0)}"
        )
    return "\n".join(lines)


def api(port, method, path, key, body=None, headers=None):
    """One request to the real daphne server; (status, JSON body)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
        | (headers or {}),
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def test_an_operator_sends_through_the_api_on_daphne_and_the_phone_gets_it_once(flow, tenants):
    from companies.models import CompanyAPIKey

    sim, app = flow
    company = tenants.a
    start_session(company.pk, actor="e2e test")
    _, key = CompanyAPIKey.objects.create_key(company=company, name="e2e")
    _, other_key = CompanyAPIKey.objects.create_key(company=tenants.b, name="e2e other")
    port = app.start_daphne()
    app.start_workers("w1", "w2")
    pair_companies(sim, [company.pk], app)
    wait_for(lambda: api(port, "GET", "health", key)[0] in (200, 503), 30, "daphne up")

    status, session = api(port, "GET", f"whatsapp/sessions/{company.pk}/status", key)
    assert status == 200 and session["state"] == "connected", session
    path = f"whatsapp/sessions/{company.pk}/outbound/"
    body = {"to": "+49 151 90000042", "text": "Your appointment is confirmed"}
    first = api(port, "POST", path, key, body, {"Idempotency-Key": "booking-42"})
    again = api(port, "POST", path, key, body, {"Idempotency-Key": "booking-42"})
    assert first[0] == 202 and again[0] == 202, (first, again)
    assert first[1]["id"] == again[1]["id"]
    # Another company's key sees nothing of it.
    assert api(port, "GET", f"{path}{first[1]['id']}/", other_key)[0] == 404

    wait_for(
        lambda: api(port, "GET", f"{path}{first[1]['id']}/", key)[1].get("status") == "delivered",
        60,
        "the message delivered",
        interval=0.5,
    )
    time.sleep(1.0)  # a duplicate send would show up now
    sends = sim.sends(phone="4915190000042")
    print(f"api flow: {len(sends)} send(s) received by the phone; statuses via daphne")
    assert [s["text"] for s in sends] == ["Your appointment is confirmed"]
    assert OutboundMessage.objects.get().wa_message_id == sends[0]["id"]
    assert sim.stats()["totals"].get("conflicts", 0) == 0

    # Recipients resolved as WhatsApp clients do (issue 16 c): this +52 number's account
    # lives at WhatsApp's 521 JID, the other number is not on WhatsApp at all.
    sim.post("numbers", numbers={"+525512345678": "mexican_legacy", "+4915199999999": None})
    mexico = api(port, "POST", path, key, {"to": "+52 55 1234 5678", "text": "Hola"})
    nobody = api(port, "POST", path, key, {"to": "+49 151 99999999", "text": "Hello?"})
    assert mexico[0] == 202 and nobody[0] == 202, (mexico, nobody)

    def outcome(row):
        return api(port, "GET", f"{path}{row[1]['id']}/", key)[1]

    wait_for(lambda: outcome(mexico)["status"] == "delivered", 60, "+52 delivered", interval=0.5)
    wait_for(lambda: outcome(nobody)["status"] == "failed", 60, "not on WhatsApp", interval=0.5)
    assert outcome(mexico)["to_jid"] == "5215512345678@s.whatsapp.net"
    assert outcome(nobody)["last_error"] == "+4915199999999 is not on WhatsApp (permanent)"
    assert [s["text"] for s in sim.sends(phone="5215512345678")] == ["Hola"]
    assert sim.sends(phone="525512345678") == []
    assert sim.sends(phone="4915199999999") == []
    # Now the answer is kept: refused before anything is queued.
    refused = api(port, "POST", path, key, {"to": "+4915199999999", "text": "Hello??"})
    assert refused[0] == 400
    assert refused[1]["error"]["message"] == "+4915199999999 is not on WhatsApp"
    assert sim.stats()["totals"]["lookups"] == 3  # the first number, +52, the unknown one
