"""Concurrent retries with one Idempotency-Key: one message, the same answer
for every request (the unique constraint decides, not the API)."""

import threading

import pytest
from django.db import connection

from whatsapp.models import OutboundMessage

from .conftest import key_client

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")


def test_parallel_requests_with_one_key_store_one_message(tenants, keys):
    url = f"/api/v1/whatsapp/sessions/{tenants.a.pk}/outbound/"
    body = {"to": "+491707654321", "text": "exactly once"}
    barrier = threading.Barrier(6)
    results, errors, replayed = [], [], []

    def send():
        try:
            client = key_client(keys["a"])
            barrier.wait(timeout=30)
            response = client.post(url, body, format="json", HTTP_IDEMPOTENCY_KEY="race-1")
            results.append((response.status_code, response.json().get("id")))
            replayed.append(response.has_header("Idempotent-Replayed"))
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert len(results) == 6
    assert {status for status, _ in results} == {202}
    assert len({message_id for _, message_id in results}) == 1
    assert sorted(replayed) == [False] + [True] * 5  # one created it, five got the replay
    assert OutboundMessage.objects.filter(company=tenants.a, idempotency_key="race-1").count() == 1
