"""A request body sent with `Transfer-Encoding: chunked` and no Content-Length
(what HTTP clients do when they stream a body) is read, not taken for empty.

daphne decodes the chunks and hands the whole body to the ASGI app, but without
a Content-Length header; Django then reported no length, DRF read nothing, and
the API answered as if no body had been sent (a 400 naming every field, or worse,
defaults for a body with only optional fields). Tested against the real ASGI
application, and once through a real daphne process."""

import http.client
import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import ApplicationCommunicator

from aiadmin.asgi import application
from companies.models import CompanyAPIKey
from whatsapp.models import OutboundMessage

BODY = json.dumps({"to": "+491707654321", "text": "sent in chunks"}).encode()


@pytest.fixture
def company_key(tenants):
    _, raw = CompanyAPIKey.objects.create_key(company=tenants.a, name="chunked")
    return raw


def scope(path, raw_key, content_length=None):
    headers = [
        (b"host", b"testserver"),
        (b"content-type", b"application/json"),
        (b"authorization", f"Api-Key {raw_key}".encode()),
        (b"transfer-encoding", b"chunked"),
    ]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    return {
        "type": "http",
        "http_version": "1.1",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "https",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
    }


async def post_in_chunks(path, raw_key, chunks):
    communicator = ApplicationCommunicator(application, scope(path, raw_key))
    for i, chunk in enumerate(chunks):
        await communicator.send_input(
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        )
    start = await communicator.receive_output(timeout=20)
    body = b""
    while True:
        message = await communicator.receive_output(timeout=20)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(timeout=5)
    return start["status"], body


def outbound(tenants):
    return f"/api/v1/whatsapp/sessions/{tenants.a.pk}/outbound/"


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_without_content_length_is_read(tenants, company_key):
    chunks = [BODY[:7], BODY[7:20], BODY[20:], b""]
    status, body = async_to_sync(post_in_chunks)(outbound(tenants), company_key, chunks)
    assert status == 202, body
    assert json.loads(body)["text"] == "sent in chunks"
    assert OutboundMessage.objects.filter(text="sent in chunks").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_over_the_size_limit_is_a_413(tenants, company_key, settings):
    settings.API_MAX_BODY_BYTES = 100
    padded = json.dumps({"to": "+491707654321", "text": "x" * 200}).encode()
    chunks = [padded[:50], padded[50:]]
    status, body = async_to_sync(post_in_chunks)(outbound(tenants), company_key, chunks)
    assert status == 413, body
    assert json.loads(body)["error"]["code"] == "payload_too_large"
    assert not OutboundMessage.objects.exists()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True, databases="__all__")
def test_through_a_real_daphne_a_chunked_body_is_read(tenants, company_key, tmp_path):
    from tests.e2e_processes import AppProcesses, wait_for

    app = AppProcesses(tmp_path, DJANGO_SECURE_SSL_REDIRECT="0")

    def post(port):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(
                "POST",
                outbound(tenants),
                body=iter([BODY[:10], BODY[10:]]),
                headers={
                    "Host": "localhost",
                    "Content-Type": "application/json",
                    "Authorization": f"Api-Key {company_key}",
                },
                encode_chunked=True,
            )
            response = conn.getresponse()
            return response.status, response.read()
        except OSError:
            return None
        finally:
            conn.close()

    try:
        port = app.start_daphne("web")
        status, body = wait_for(lambda: post(port), 60, "daphne to answer")
    except AssertionError:
        print(app.logs())
        raise
    finally:
        app.stop_all()
    assert status == 202, body
    assert OutboundMessage.objects.filter(text="sent in chunks").count() == 1
