"""The conversation endpoints: chats, the thread (both sides in order, cursor
pages both ways), sending as an operator, pause/resume, contacts (search,
detail with chats, forget), and the 409 for an opted-out contact."""

import pytest

from tests.conversations.helpers import (
    PHONE,
    PHONE_JID,
    client_writes,
    phone_writes,
    setup_company,
)
from whatsapp.models import Chat, Contact, OutboundMessage

S = "/api/v1/whatsapp/sessions/{}/"


@pytest.fixture
def thread(tenants):
    """A's chat with Anna: client, handler, phone, client (handled by a person)."""
    company = setup_company(tenants.a)
    client_writes(company, "M1", "hi")
    phone_writes(company, "P1", "Maria here")
    client_writes(company, "M2", "thanks")
    return Chat.objects.get(company=company, chat_jid=PHONE_JID)


def test_the_chat_list_shows_last_message_unread_bot_state_and_contact(api_a, tenants, thread):
    response = api_a.get(S.format(tenants.a.pk) + "chats/")
    assert response.status_code == 200
    (row,) = response.json()["results"]
    assert row["id"] == thread.pk and row["last_message_preview"] == "thanks"
    assert (row["bot_state"], row["needs_human"], row["unread"]) == ("paused", True, 1)
    assert row["contact"]["phone"] == f"+{PHONE}"
    waiting = api_a.get(S.format(tenants.a.pk) + "chats/?needs_human=false").json()
    assert waiting["results"] == []


def test_the_thread_holds_both_sides_in_order_with_their_authors(api_a, tenants, thread):
    response = api_a.get(S.format(tenants.a.pk) + f"chats/{thread.pk}/messages/")
    assert response.status_code == 200
    body = response.json()
    got = [(m["direction"], m["author"], m["text"]) for m in body["results"]]
    assert got == [
        ("in", "client", "hi"),
        ("out", "handler", "Hello Anna"),
        ("out", "phone", "Maria here"),
        ("in", "client", "thanks"),
    ]
    assert body["results"][-1]["note"].startswith("handled by a person")
    assert body["older"] is None and body["newer"]


def test_cursor_pages_walk_both_directions_without_gaps(api_a, tenants, thread):
    for i in range(7):
        phone_writes(tenants.a, f"PX{i}", f"typed {i}")
    url = S.format(tenants.a.pk) + f"chats/{thread.pk}/messages/?page_size=3"
    everything = [m["id"] for m in api_a.get(url.replace("3", "200")).json()["results"]]
    assert len(everything) == 11

    pages, page = [], api_a.get(url).json()
    while True:
        pages.insert(0, [m["id"] for m in page["results"]])
        if not page["older"]:
            break
        page = api_a.get(page["older"]).json()
    assert [i for p in pages for i in p] == everything

    forward, page = [], api_a.get(url.replace("page_size=3", "page_size=200")).json()
    first = api_a.get(page["newer"]).json()
    assert first["results"] == []  # nothing newer yet
    client_writes(tenants.a, "M3", "new one")
    newer = api_a.get(page["newer"]).json()
    forward = [m["text"] for m in newer["results"]]
    assert forward == ["new one"]


def test_a_bad_cursor_or_page_size_is_a_400(api_a, tenants, thread):
    base = S.format(tenants.a.pk) + f"chats/{thread.pk}/messages/"
    assert api_a.get(base + "?before=not-a-cursor").status_code == 400
    assert api_a.get(base + "?page_size=0").status_code == 400
    assert api_a.get(base + "?before=a&after=b").status_code == 400


def test_an_operator_send_is_queued_and_pauses_the_bot(api_a, tenants, thread):
    Chat.objects.filter(pk=thread.pk).update(bot_paused_until=None, needs_human=False)
    url = S.format(tenants.a.pk) + f"chats/{thread.pk}/messages/"
    response = api_a.post(url, {"text": "Your table is ready"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["author"] == "operator"
    again = api_a.post(
        url, {"text": "Your table is ready"}, format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    replay = api_a.post(
        url, {"text": "Your table is ready"}, format="json", HTTP_IDEMPOTENCY_KEY="k1"
    )
    assert again.status_code == replay.status_code == 202
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert OutboundMessage.objects.filter(author="operator").count() == 2
    thread.refresh_from_db()
    assert thread.bot_is_paused() and thread.paused_by == "operator"


def test_pause_and_resume(api_a, tenants, thread):
    base = S.format(tenants.a.pk) + f"chats/{thread.pk}/"
    resumed = api_a.post(base + "resume")
    assert resumed.status_code == 200
    assert (resumed.json()["bot_state"], resumed.json()["needs_human"]) == ("active", False)
    paused = api_a.post(base + "pause", {"minutes": 5}, format="json")
    assert paused.status_code == 200 and paused.json()["bot_state"] == "paused"
    assert api_a.post(base + "pause", {"minutes": 0}, format="json").status_code == 400


def test_a_send_to_an_opted_out_contact_is_a_clear_409(api_a, tenants, thread):
    client_writes(tenants.a, "M9", "STOP")
    chat_send = api_a.post(
        S.format(tenants.a.pk) + f"chats/{thread.pk}/messages/", {"text": "hi"}, format="json"
    )
    plain_send = api_a.post(
        S.format(tenants.a.pk) + "outbound/", {"to": f"+{PHONE}", "text": "hi"}, format="json"
    )
    for response in (chat_send, plain_send):
        assert response.status_code == 409
        error = response.json()["error"]
        assert error["code"] == "contact_opted_out" and "opted out" in error["message"]


def test_contacts_search_detail_and_forget(api_a, callers, tenants, thread):
    base = S.format(tenants.a.pk) + "contacts/"
    client_writes(tenants.a, "B1", "hi", chat="4917099887766@s.whatsapp.net", name="Bruno")
    assert len(api_a.get(base).json()["results"]) == 2
    by_name = api_a.get(base + "?search=anna").json()["results"]
    by_phone = api_a.get(base + "?search=%2B49 151 1234").json()["results"]
    assert [c["push_name"] for c in by_name] == [c["push_name"] for c in by_phone] == ["Anna"]
    contact = Contact.objects.get(push_name="Anna")
    detail = api_a.get(base + f"{contact.pk}/").json()
    assert [c["id"] for c in detail["chats"]] == [thread.pk]

    assert callers["member"].delete(base + f"{contact.pk}/").status_code == 403
    forgotten = api_a.delete(base + f"{contact.pk}/")
    assert forgotten.status_code == 200
    assert forgotten.json() == {"inbound": 2, "outbound": 2, "chats": 1}
    assert api_a.get(base + f"{contact.pk}/").status_code == 404
