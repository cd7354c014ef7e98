"""Turns end to end, real processes: the simulator, a `runworker`, the job
cluster and the turn runner (`runturns`), on the test database (both passes).

Phones write in bursts; each burst is answered once, after its debounce
window, and the simulator saw what a client sees: the burst marked read when
its turn started, "typing..." while the handler worked, then the reply, then
"paused"."""

import json
import signal
import time

import pytest

from tests.e2e_processes import AppProcesses, Simulator, pair_companies, wait_for
from whatsapp.models import AutoReplyRule, ProcessingJob, Turn
from whatsapp.services.control import start_session

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]

PHONES = [f"4915190{i:06d}" for i in range(3)]


@pytest.fixture
def flow(tmp_path):
    sim = Simulator(tmp_path).start()
    app = AppProcesses(
        tmp_path, sim, WHATSAPP_LEASE_TTL=10, WHATSAPP_RECONCILE_INTERVAL=1, TURN_POLL=0.05
    )
    yield sim, app
    app.stop_all()
    sim.stop()


def test_each_burst_is_answered_once_after_read_marks_and_typing(flow, company):
    sim, app = flow
    company.inbound_handler = "keyword_turns"
    company.typing_seconds_per_char = 0.02
    company.save()
    AutoReplyRule.objects.create(
        company=company, match=AutoReplyRule.Match.ANY, reply_text="Thanks, {name}"
    )
    start_session(company.pk, actor="e2e test")
    app.start_workers("w1")
    app.start_qcluster()
    app.start_turns()
    pair_companies(sim, [company.pk], app)

    sent_at = {}
    for n, phone in enumerate(PHONES):
        burst = [
            {"from": phone, "push_name": f"Phone {n}", "text": text}
            for text in ("hi", "I need", "a haircut tomorrow")
        ]
        sim.post("messages", company=company.pk, messages=burst)
        sent_at[phone] = time.time()

    def replies():
        return sim.get("sends", company=str(company.pk))["sends"]

    wait_for(lambda: len(replies()) >= len(PHONES), 60, "one reply per burst", interval=0.2)
    time.sleep(3)  # nothing more may come
    got = replies()
    assert sorted(r["phone"] for r in got) == sorted(PHONES), app.logs()
    assert {r["text"] for r in got} == {f"Thanks, Phone {n}" for n in range(3)}
    assert Turn.objects.filter(status=Turn.Status.ANSWERED).count() == len(PHONES)
    assert set(ProcessingJob.objects.values_list("status", flat=True)) == {
        ProcessingJob.Status.SUCCEEDED
    }
    assert ProcessingJob.objects.count() == 3 * len(PHONES)

    activity = wait_for(
        lambda: (
            (a := sim.get("activity", company=str(company.pk))["activity"])
            and sum(r.get("state") == "paused" for r in a) >= len(PHONES)
            and a
        ),
        20,
        "read marks and presence for every turn",
    )
    for reply in got:
        chat = reply["to"]
        mine = [r for r in activity if r["chat"] == chat]
        reads = [r for r in mine if r["type"] == "read"]
        composing = [r for r in mine if r.get("state") == "composing"]
        paused = [r for r in mine if r.get("state") == "paused"]
        assert len(reads) == 1 and len(reads[0]["ids"]) == 3, mine
        assert composing and paused, mine
        # Read when the turn started, typing before the reply, paused after it.
        assert reads[0]["at"] <= composing[0]["at"] <= reply["at"] <= paused[-1]["at"] + 1
        # Not before the debounce window (2 s) after the burst.
        assert reply["at"] - sent_at[reply["phone"]] >= 1.9


def test_a_runner_killed_mid_turn_is_replaced_and_the_turn_answered_once(tmp_path, company):
    sim = Simulator(tmp_path).start()
    app = AppProcesses(
        tmp_path,
        sim,
        WHATSAPP_LEASE_TTL=10,
        WHATSAPP_RECONCILE_INTERVAL=1,
        TURN_POLL=0.05,
        WHATSAPP_EXTRA_INBOUND_HANDLERS=json.dumps(
            {"slow_turn": {"path": "tests.whatsapp.turn_handlers.slow_turn", "label": "slow"}}
        ),
    )
    try:
        company.inbound_handler = "slow_turn"
        company.save()
        start_session(company.pk, actor="e2e test")
        app.start_workers("w1")
        app.start_qcluster()
        first = app.start_turns("t1")
        pair_companies(sim, [company.pk], app)
        sim.post("messages", company=company.pk, messages=[{"from": PHONES[0], "text": "hi"}])
        wait_for(
            lambda: Turn.objects.filter(status=Turn.Status.RUNNING).exists(),
            60,
            "the turn running in t1",
        )
        first.send_signal(signal.SIGKILL)  # mid-handler: its turn is left running
        first.wait(timeout=10)
        app.start_turns("t2")

        def replies():
            return sim.get("sends", company=str(company.pk))["sends"]

        wait_for(lambda: replies(), 60, "the reply", interval=0.2)
        time.sleep(6)  # a second reply would be here by now
        assert [r["text"] for r in replies()] == ["attempt 2 after died"], app.logs()
        turn = Turn.objects.get()
        assert (turn.status, turn.attempts) == (Turn.Status.ANSWERED, 2)
        assert ProcessingJob.objects.get().status == ProcessingJob.Status.SUCCEEDED
    finally:
        app.stop_all()
        sim.stop()
