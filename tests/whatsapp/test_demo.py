"""The demo: `manage.py demo_company`, and a simulator in demo mode (`--auto-pair`)
pairing the company's worker by itself and serving the page to write as a phone."""

import asyncio
import io
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils.timezone import now

from companies.models import Company
from tests.e2e_processes import AppProcesses, Simulator, free_port, wait_connected
from whatsapp.handlers import auto_reply
from whatsapp.models import AutoReplyRule, DesiredState, InboundMessage, WhatsAppSession
from whatsapp.services.processing import HandlerResult
from whatsapp.transport import base
from whatsapp.transport.simulator_client import SimulatorTransport

CHAT = "4915112345678@s.whatsapp.net"


@pytest.mark.django_db(databases="__all__")
def test_demo_company_creates_the_company_its_rules_and_a_running_session_once(capsys):
    call_command("demo_company")
    call_command("demo_company")  # idempotent: nothing doubled
    company = Company.objects.get(slug="demo-salon")
    assert Company.objects.filter(slug="demo-salon").count() == 1
    assert AutoReplyRule.objects.filter(company=company).count() == 4
    session = WhatsAppSession.objects.get(company=company)
    assert session.desired_state == DesiredState.RUNNING
    out = capsys.readouterr().out
    assert "created company" in out and "kept company" in out


@pytest.mark.django_db(databases="__all__")
def test_the_demo_rules_answer_by_keyword_with_the_senders_name():
    call_command("demo_company")
    company = Company.objects.get(slug="demo-salon")

    def message(text):
        return InboundMessage(
            company=company,
            wa_message_id="3A0001",
            chat_jid=CHAT,
            sender_jid=CHAT,
            push_name="Anna",
            text=text,
            sent_at=now(),
        )

    hours = auto_reply(message("What are your opening HOURS?"))
    other = auto_reply(message("hello"))
    assert isinstance(hours, HandlerResult)
    assert hours.reply_text == "Hi Anna! We are open Monday to Friday, 9:00-18:00."
    assert other.reply_text.startswith("Thanks Anna, we got your message")


@pytest.mark.e2e
def test_a_simulator_in_demo_mode_pairs_every_new_device_by_itself(tmp_path):
    sim = Simulator(tmp_path, extra_args=["--auto-pair", "0.3"]).start()
    try:

        async def body():
            events = []

            async def sink(event):
                events.append(event)

            t = SimulatorTransport(url=sim.url, store_dir=tmp_path / "store")
            client = t.new_client(base.ClientSpec(company_id=41), sink)
            await client.start()
            for _ in range(200):
                if any(isinstance(e, base.Connected) for e in events):
                    break
                await asyncio.sleep(0.05)
            await client.stop()
            await t.aclose()
            return [type(e) for e in events]

        kinds = asyncio.run(body())
        assert kinds == [base.QRCode, base.PairSuccess, base.Connected]
        assert sim.stats()["totals"]["paired_by_auto"] == 1
        with urllib.request.urlopen(f"{sim.base}/", timeout=10) as response:
            page = response.read().decode()
        assert response.status == 200 and "Write as a customer's phone" in page
        assert "/control/messages" in page and "/sends?phone=" in page
    finally:
        sim.stop()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_the_send_command_writes_as_a_phone_and_prints_the_answer(tmp_path):
    call_command("demo_company")
    company = Company.objects.get(slug="demo-salon")
    sim = Simulator(tmp_path, extra_args=["--auto-pair", "0.2"]).start()
    try:

        async def body():
            replies = set()
            client = None

            connected = asyncio.Event()

            async def sink(event):
                if isinstance(event, base.Connected):
                    connected.set()
                if isinstance(event, base.InboundMessage):
                    info = event.event.Info
                    chat = f"{info.MessageSource.Chat.User}@{info.MessageSource.Chat.Server}"
                    text = f"echo: {event.event.Message.conversation} ({info.Pushname})"
                    # Reply from another task, as the worker's drain does.
                    replies.add(asyncio.create_task(client.send_text(chat, text)))

            t = SimulatorTransport(url=sim.url, store_dir=tmp_path / "store")
            client = t.new_client(base.ClientSpec(company_id=company.pk), sink)
            await client.start()
            await asyncio.wait_for(connected.wait(), 20)  # paired by the simulator itself
            out = io.StringIO()
            await asyncio.to_thread(
                call_command,
                "whatsapp_simulator_send",
                "hello there",
                "--name",
                "Ben",
                "--simulator",
                sim.url,
                "--wait",
                "20",
                stdout=out,
            )
            sent = await asyncio.gather(*replies)
            await client.stop()
            await t.aclose()
            return out.getvalue(), sent

        output, sent = asyncio.run(body())
    finally:
        sim.stop()
    assert "sent " in output and "to Demo Salon" in output
    assert len(sent) == 1 and f"answer {sent[0]}: echo: hello there (Ben)" in output


@pytest.mark.django_db(databases="__all__")
def test_the_send_command_says_what_is_wrong_when_it_cannot_deliver():
    call_command("demo_company")
    with pytest.raises(CommandError, match="no company 'nope'"):
        call_command("whatsapp_simulator_send", "hi", "--company", "nope")
    dead = f"ws://127.0.0.1:{free_port()}"
    with pytest.raises(CommandError, match="cannot reach the simulator"):
        call_command("whatsapp_simulator_send", "hi", "--simulator", dead)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_a_person_writes_on_the_demo_page_and_sees_the_answer_in_a_real_browser(tmp_path):
    """The whole demo: simulator (auto-pairing), a worker and the job cluster as real
    processes; the page in headless chromium; the answer comes from the company's rule."""
    chromium = os.environ.get("AIADMIN_CHROMIUM", "/usr/bin/chromium")
    if not (os.path.exists(chromium) or shutil.which(chromium)):
        pytest.fail(
            f"this test needs Debian's chromium at {chromium} (apt-get install chromium) "
            "or AIADMIN_CHROMIUM set to a Chromium binary"
        )
    call_command("demo_company")
    company = Company.objects.get(slug="demo-salon")
    sim = Simulator(tmp_path, extra_args=["--auto-pair", "0.3"]).start()
    app = AppProcesses(tmp_path, sim, WHATSAPP_RECONCILE_INTERVAL=1)
    try:
        app.start_workers("w1")
        app.start_qcluster()
        wait_connected([company.pk], app, "the demo company paired by itself")
        chat = run_page(chromium, sim.base, company.pk)
    finally:
        app.stop_all()
        sim.stop()
    assert "you" in chat and "what are your opening hours?" in chat
    assert "Hi Anna! We are open Monday to Friday, 9:00-18:00." in chat
    assert "[image] my new haircut" in chat
    question, photo = InboundMessage.objects.order_by("id")
    assert question.text == "what are your opening hours?" and question.push_name == "Anna"
    assert photo.kind == "image" and photo.text == "my new haircut"
    for message in (question, photo):
        assert message.job.status == "succeeded"
        assert message.reply.wa_message_id in chat  # the page shows the id WhatsApp gave it


def run_page(chromium, base, company_id):
    from playwright.sync_api import expect, sync_playwright

    artifacts = Path(__file__).resolve().parents[2] / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(f"{base}/")
            expect(page.locator(f'#company option:text-is("{company_id}")')).to_have_count(
                1, timeout=20_000
            )
            page.select_option("#company", str(company_id))
            page.fill("#name", "Anna")
            page.fill("#text", "what are your opening hours?")
            page.click("#send")
            answer = page.locator("#chat .them")
            expect(answer).to_contain_text("We are open Monday to Friday", timeout=60_000)
            page.select_option("#kind", "image")
            page.fill("#text", "my new haircut")
            page.click("#send")
            expect(answer).to_have_count(2, timeout=60_000)
            expect(answer.nth(1)).to_contain_text("Thanks Anna, we got your message")
            page.screenshot(path=str(artifacts / "demo-simulator-page.png"), full_page=True)
            return page.locator("#chat").inner_text()
        finally:
            browser.close()
