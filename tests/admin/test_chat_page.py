"""The admin's chat page in a real browser (chromium + Playwright) against a
real daphne: a thread that reads like a chat (bubbles, times, ticks, who
wrote each reply), a client message arriving live over the WebSocket, the
reply box (an operator's send pauses the bot) and the resume button. The
screenshot goes to docs/img/admin-chat.png."""

import shutil

import pytest

from tests.conversations.helpers import client_writes, phone_writes, setup_company
from whatsapp.models import Chat, OutboundMessage
from whatsapp.services.sending import record_receipts

from .test_browser import ARTIFACTS, LIVE_TIMEOUT_MS, browser, log_in, off_loop, server  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]


def grant(user, *codenames):
    from django.contrib.auth.models import Permission

    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="whatsapp", codename__in=codenames)
    )


def a_conversation(company):
    setup_company(company, reply="Hello {name}, how can we help?")
    first = client_writes(company, "3A0000000000000001", "Hi, do you have a table for 4 tonight?")
    OutboundMessage.objects.filter(pk=first.reply.pk).update(
        status="sent", wa_message_id="3EB0REPLY1"
    )
    record_receipts(company.pk, [(["3EB0REPLY1"], "read")])
    phone_writes(company, "3A0000000000000002", "Hi Anna, Maria here - yes, 8 pm works!")
    return Chat.objects.get(company=company)


def test_the_chat_page_reads_like_a_chat_and_updates_live(tenants, server, browser):  # noqa: F811
    from playwright.sync_api import expect

    chat = off_loop(a_conversation, tenants.a)
    off_loop(grant, tenants.owner, "view_chat", "change_chat", "view_contact")
    url = f"/admin/whatsapp/chat/{chat.pk}/change/"
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    log_in(page, server, "owner", "pw-owner-123!", url)
    expect(page.locator("[data-wa-live-status]")).to_have_text("live", timeout=LIVE_TIMEOUT_MS)
    bubbles = page.locator(".wa-bubble")
    expect(bubbles).to_have_count(3)
    expect(bubbles.nth(0)).to_contain_text("table for 4")
    expect(bubbles.nth(1).locator(".wa-bubble-who")).to_have_text("bot")
    expect(bubbles.nth(1).locator("[data-status]")).to_have_attribute("data-status", "read")
    expect(bubbles.nth(2).locator(".wa-bubble-who")).to_have_text("phone")
    expect(page.locator("[data-bot-state]")).to_have_attribute("data-bot-state", "paused")
    page.evaluate("window.__sameDocument = true")

    # A client message arrives while the bot is paused: shown live, no reload.
    off_loop(client_writes, tenants.a, "3A0000000000000003", "Great, see you at 8!")
    expect(bubbles).to_have_count(4, timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("[data-needs-human]")).to_be_visible()
    expect(bubbles.nth(3)).to_contain_text("handled by a person")
    assert page.evaluate("window.__sameDocument") is True

    # The reply box: sent as an operator.
    page.fill(".wa-reply textarea", "Your table is booked, Anna.")
    page.click(".wa-reply button")
    expect(bubbles).to_have_count(5)
    expect(bubbles.nth(4).locator(".wa-bubble-who")).to_have_text("operator")
    expect(bubbles.nth(4).locator("[data-status]")).to_have_attribute("data-status", "queued")
    expect(page.locator("[data-needs-human]")).to_have_count(0)  # a person answered
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-chat.png"), full_page=True)
    shutil.copy(ARTIFACTS / "admin-chat.png", "docs/img/admin-chat.png")

    page.click("[data-resume]")
    expect(page.locator("[data-bot-state]")).to_have_attribute("data-bot-state", "active")
    expect(page.locator("[data-pause]")).to_be_visible()


def test_a_plain_member_reads_the_chat_without_a_reply_box(tenants, server, browser):  # noqa: F811
    from playwright.sync_api import expect

    chat = off_loop(a_conversation, tenants.a)
    off_loop(grant, tenants.member, "view_chat", "change_chat")  # the role still decides
    page = browser.new_page()
    url = f"/admin/whatsapp/chat/{chat.pk}/change/"
    log_in(page, server, "member", "pw-member-123!", url)
    expect(page.locator(".wa-bubble")).to_have_count(3)
    expect(page.locator(".wa-reply")).to_have_count(0)
    expect(page.locator("[data-resume]")).to_have_count(0)
