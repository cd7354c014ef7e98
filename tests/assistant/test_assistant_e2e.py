"""End to end on real processes: a phone of the WhatsApp simulator writes, a
`runworker whatsapp` stores the message, the job cluster runs the assistant
handler, which asks the loopback test model (in this test process) and the
answer reaches the phone -- with the facts and the chat's history in the
prompt, and a long answer arriving as several messages in order."""

import pytest

from assistant.models import AssistantRun, Outcome
from tests.e2e_processes import AppProcesses, Simulator, pair_companies, wait_for
from whatsapp.services.control import start_session

from .model_server import Reply

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]

PHONE = "4915190000001"


@pytest.fixture
def flow(tmp_path):
    sim = Simulator(tmp_path).start()
    app = AppProcesses(tmp_path, sim, WHATSAPP_LEASE_TTL=10, WHATSAPP_RECONCILE_INTERVAL=1)
    yield sim, app
    app.stop_all()
    sim.stop()


def test_a_client_message_gets_the_model_answer_on_the_phone(flow, assistant, model_server):
    sim, app = flow
    company = assistant.company
    start_session(company.pk, actor="e2e test")
    app.start_workers("w1")
    app.start_qcluster()
    pair_companies(sim, [company.pk], app)

    model_server.add(Reply("We open at 9, Monday to Friday."))
    sim.post("messages", company=company.pk,
             messages=[{"from": PHONE, "push_name": "Ben", "text": "When do you open?"}])
    try:
        wait_for(lambda: len(sim.sends(company=company.pk)) >= 1, 90, "the first answer")
    except AssertionError:
        print(app.logs())
        raise
    assert sim.sends(company=company.pk)[0]["text"] == "We open at 9, Monday to Friday."

    sentence = "Our colouring takes about two hours and costs 60 EUR in total. "
    model_server.add(Reply(sentence * 100))  # ~6,300 characters: two messages
    sim.post("messages", company=company.pk,
             messages=[{"from": PHONE, "push_name": "Ben", "text": "And colouring?"}])
    wait_for(lambda: len(sim.sends(company=company.pk)) >= 3, 90, "the split answer")
    sends = sim.sends(company=company.pk)
    assert [s["phone"] for s in sends] == [PHONE] * 3
    assert " ".join(s["text"] for s in sends[1:]) == (sentence * 100).strip()

    second = model_server.bodies()[1]["messages"]
    assert "Mon-Fri 9-18" in second[0]["content"]
    assert [m["content"] for m in second[1:]] == [
        "When do you open?", "We open at 9, Monday to Friday.", "And colouring?"]
    assert list(AssistantRun.objects.values_list("outcome", flat=True)) == [Outcome.ANSWERED] * 2
