"""Message endpoints: sending (phone or JID, validation, size limits,
Stripe-like Idempotency-Key), outbound status, inbound list with filters and
cursor pagination, and the processing status of one message."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone

from whatsapp.models import OutboundMessage, ProcessingJob

from .conftest import A_PHONE, make_inbound


def url(company, suffix=""):
    return f"/api/v1/whatsapp/sessions/{company.pk}/{suffix}"


def send(client, company, body, key=None, **extra):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post(url(company, "outbound/"), body, format="json", **headers, **extra)


def test_sending_to_a_phone_number_queues_one_message_in_e164(api_a, tenants):
    response = send(api_a, tenants.a, {"to": "+49 (170) 765-4321", "text": "Hallo"})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["to_phone"] == "+491707654321"
    assert body["to_jid"] == "491707654321@s.whatsapp.net"
    assert OutboundMessage.objects.get(pk=body["id"]).company == tenants.a


@pytest.mark.parametrize(
    "to, jid",
    [
        ("491707654321:12@s.whatsapp.net", "491707654321@s.whatsapp.net"),
        ("123456789012345@lid", "123456789012345@lid"),
        ("120363025246125486@g.us", "120363025246125486@g.us"),
    ],
)
def test_sending_to_a_jid_uses_the_bare_jid(to, jid, api_a, tenants):
    response = send(api_a, tenants.a, {"to": to, "text": "Hallo"})
    assert response.status_code == 202
    assert response.json()["to_jid"] == jid


def test_the_same_idempotency_key_and_body_return_the_same_message_once(api_a, tenants):
    body = {"to": "+491707654321", "text": "Your appointment is confirmed"}
    first = send(api_a, tenants.a, body, key="order-42")
    again = send(api_a, tenants.a, body, key="order-42")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again["Idempotent-Replayed"] == "true"
    assert not first.has_header("Idempotent-Replayed")
    assert OutboundMessage.objects.filter(company=tenants.a).count() == 1


def test_the_same_recipient_in_another_format_counts_as_the_same_body(api_a, tenants):
    first = send(api_a, tenants.a, {"to": "+491707654321", "text": "x"}, key="k1")
    again = send(api_a, tenants.a, {"to": "491707654321@s.whatsapp.net", "text": "x"}, key="k1")
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    "second",
    [
        {"to": "+491707654321", "text": "another text"},
        {"to": "+491701111999", "text": "same text"},
    ],
)
def test_the_same_idempotency_key_with_another_body_is_a_409(second, api_a, tenants):
    send(api_a, tenants.a, {"to": "+491707654321", "text": "same text"}, key="dup")
    response = send(api_a, tenants.a, second, key="dup")
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "idempotency_key_reused"
    assert "dup" in error["message"]
    assert OutboundMessage.objects.filter(company=tenants.a).count() == 1


def test_idempotency_keys_are_per_company(callers, tenants):
    body = {"to": "+491707654321", "text": "hi"}
    a = send(callers["owner_key"], tenants.a, body, key="shared")
    b = send(callers["other_key"], tenants.b, body, key="shared")
    assert a.status_code == b.status_code == 202
    assert a.json()["id"] != b.json()["id"]
    assert not b.has_header("Idempotent-Replayed")


def test_without_a_key_every_request_is_a_new_message(api_a, tenants):
    body = {"to": "+491707654321", "text": "hi"}
    assert send(api_a, tenants.a, body).json()["id"] != send(api_a, tenants.a, body).json()["id"]


@pytest.mark.parametrize("key", ["", "x" * 129, "schlüssel"])
def test_a_malformed_idempotency_key_is_a_400(key, api_a, tenants):
    response = send(api_a, tenants.a, {"to": "+491707654321", "text": "hi"}, key=key)
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]["fields"]
    assert not OutboundMessage.objects.exists()


@pytest.mark.parametrize(
    "body, field",
    [
        ({"to": "12", "text": "hi"}, "to"),
        ({"to": "+999 1234567", "text": "hi"}, "to"),
        ({"to": "status@broadcast", "text": "hi"}, "to"),
        ({"to": "abc@", "text": "hi"}, "to"),
        ({"text": "hi"}, "to"),
        ({"to": "+491707654321", "text": "   "}, "text"),
        ({"to": "+491707654321"}, "text"),
        ({"to": "+491707654321", "text": 5 * "x" * 1000}, "text"),
        ({"to": "+491707654321", "text": "nul\x00byte"}, "text"),
        ({"to": "+491707654321", "text": 12345}, "text"),
        ({"to": 491707654321, "text": "numbers are not strings"}, "to"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(body, field, api_a, tenants):
    response = send(api_a, tenants.a, body)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"]
    assert error["message"].startswith(f"{field}:")
    assert not OutboundMessage.objects.exists()


def test_the_text_limit_is_the_configured_one(api_a, tenants):
    text = "y" * 4096
    assert send(api_a, tenants.a, {"to": "+491707654321", "text": text}).status_code == 202
    with override_settings(WHATSAPP={**settings.WHATSAPP, "MAX_TEXT_LENGTH": 10}):
        response = send(api_a, tenants.a, {"to": "+491707654321", "text": "y" * 11})
    assert response.status_code == 400
    assert "limit is 10" in response.json()["error"]["message"]


def test_malformed_json_is_a_400(api_a, tenants):
    response = api_a.post(url(tenants.a, "outbound/"), b'{"to": ', content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


def test_a_form_encoded_body_is_a_415(api_a, tenants):
    response = api_a.post(
        url(tenants.a, "outbound/"),
        "to=%2B491707654321&text=hi",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_a_multipart_body_without_a_file_is_a_400_not_a_text(api_a, tenants):
    """multipart/form-data is for file uploads (docs/media.md): a text sent that
    way is told the file is missing, and nothing is queued."""
    response = api_a.post(url(tenants.a, "outbound/"), {"to": "+491707654321", "text": "hi"})
    assert response.status_code == 400
    assert "file" in response.json()["error"]["fields"]
    assert not OutboundMessage.objects.exists()


@override_settings(API_MAX_BODY_BYTES=1000)
def test_a_body_over_the_size_limit_is_a_413(api_a, tenants):
    response = send(api_a, tenants.a, {"to": "+491707654321", "text": "z" * 2000})
    assert response.status_code == 413
    assert "1000 bytes" in response.json()["error"]["message"]
    assert not OutboundMessage.objects.exists()


def test_outbound_status_shows_the_worker_s_progress(api_a, tenants):
    sent = send(api_a, tenants.a, {"to": "+491707654321", "text": "hi"}).json()
    OutboundMessage.objects.filter(pk=sent["id"]).update(
        status=OutboundMessage.Status.SENT, wa_message_id="3EB0ABC", sent_at=timezone.now()
    )
    body = api_a.get(url(tenants.a, f"outbound/{sent['id']}/")).json()
    assert body["status"] == "sent"
    assert body["wa_message_id"] == "3EB0ABC"


def test_an_unknown_outbound_id_is_a_404(api_a, tenants):
    assert api_a.get(url(tenants.a, "outbound/999999/")).status_code == 404


@pytest.fixture
def inbox(tenants):
    """Six inbound messages of A over six hours, two senders, mixed job states."""
    now = timezone.now()
    statuses = [
        ProcessingJob.Status.SUCCEEDED,
        ProcessingJob.Status.FAILED,
        ProcessingJob.Status.QUEUED,
    ]
    messages = []
    for i in range(6):
        phone = A_PHONE if i % 2 == 0 else "+4917033333333"
        messages.append(
            make_inbound(
                tenants.a,
                f"IN{i}",
                phone,
                f"text {i}",
                status=statuses[i % 3],
                at=now - timedelta(hours=6 - i),
            )
        )
    make_inbound(tenants.b, "BETA0", A_PHONE, "beta's own message")
    return messages


def ids(response):
    assert response.status_code == 200, response.content
    return [row["wa_message_id"] for row in response.json()["results"]]


def test_the_inbound_list_is_newest_first_and_only_the_company_s(api_a, tenants, inbox):
    assert ids(api_a.get(url(tenants.a, "inbound/"))) == [f"IN{i}" for i in range(5, -1, -1)]


def test_the_inbound_list_filters_by_phone_in_any_format(api_a, tenants, inbox):
    response = api_a.get(url(tenants.a, "inbound/"), {"phone": "0049 170 11111111"})
    assert ids(response) == ["IN4", "IN2", "IN0"]


def test_the_inbound_list_filters_by_date_range(api_a, tenants, inbox):
    after, before = inbox[1].received_at, inbox[4].received_at
    response = api_a.get(
        url(tenants.a, "inbound/"),
        {"received_after": after.isoformat(), "received_before": before.isoformat()},
    )
    assert ids(response) == ["IN3", "IN2", "IN1"]


def test_the_inbound_list_filters_by_processing_status(api_a, tenants, inbox):
    assert ids(api_a.get(url(tenants.a, "inbound/"), {"status": "failed"})) == ["IN4", "IN1"]


@pytest.mark.parametrize(
    "params, field",
    [
        ({"phone": "12"}, "phone"),
        ({"received_after": "yesterday"}, "received_after"),
        ({"status": "exploded"}, "status"),
        (
            {"received_after": "2026-01-02T00:00:00Z", "received_before": "2026-01-01T00:00:00Z"},
            "received_before",
        ),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"page_size": "0"}, "page_size"),
        ({"page_size": "many"}, "page_size"),
    ],
)
def test_an_invalid_filter_is_a_400_naming_it(params, field, api_a, tenants, inbox):
    response = api_a.get(url(tenants.a, "inbound/"), params)
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_cursor_pagination_walks_every_message_once_even_with_new_arrivals(api_a, tenants, inbox):
    first = api_a.get(url(tenants.a, "inbound/"), {"page_size": 4}).json()
    make_inbound(tenants.a, "LATE", A_PHONE, "arrived while paging")
    second = api_a.get(first["next"]).json()
    seen = [r["wa_message_id"] for r in first["results"] + second["results"]]
    assert seen == [f"IN{i}" for i in range(5, -1, -1)]
    assert second["next"] is None


def test_processing_status_of_one_message(api_a, tenants, inbox):
    ProcessingJob.objects.filter(message=inbox[1]).update(error="handler exploded", attempts=3)
    response = api_a.get(url(tenants.a, f"inbound/{inbox[1].pk}/processing"))
    assert response.status_code == 200
    assert response.json()["status"] == "failed"
    assert response.json()["error"] == "handler exploded"
    assert response.json()["attempts"] == 3
    detail = api_a.get(url(tenants.a, f"inbound/{inbox[1].pk}/")).json()
    assert detail["processing"]["status"] == "failed"


def test_a_message_without_a_processing_job_says_so(api_a, tenants, inbox):
    ProcessingJob.objects.filter(message=inbox[0]).delete()
    response = api_a.get(url(tenants.a, f"inbound/{inbox[0].pk}/processing"))
    assert response.status_code == 404
    assert "no processing job" in response.json()["error"]["message"]
    assert api_a.get(url(tenants.a, f"inbound/{inbox[0].pk}/")).json()["processing"] is None


def test_listing_costs_the_same_queries_for_few_or_many_messages(
    api_a, tenants, inbox, django_assert_max_num_queries
):
    with django_assert_max_num_queries(8) as few:
        api_a.get(url(tenants.a, "inbound/"))
    for i in range(30):
        make_inbound(tenants.a, f"MORE{i}", A_PHONE, "more")
    with django_assert_max_num_queries(len(few.captured_queries)):
        assert len(api_a.get(url(tenants.a, "inbound/")).json()["results"]) == 36
