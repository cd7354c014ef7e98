"""Media over the API: sending a file (multipart) or a location, the checks
before anything is queued (size per kind, content type by content, voice
notes, URL rules), idempotency, and listing / downloading a message's media."""

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from whatsapp.models import MessageMedia, OutboundMessage
from whatsapp.simulator.protocol import sample_media
from whatsapp.transport.media import WHATSAPP_LIMITS

S = "/api/v1/whatsapp/sessions/{}/"
TO = "+491707654321"


def outbound(company):
    return S.format(company.pk) + "outbound/"


def upload(client, company, content, name="photo.jpg", key=None, **fields):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    body = {"to": TO, "file": SimpleUploadedFile(name, content, "image/jpeg"), **fields}
    return client.post(outbound(company), body, format="multipart", **headers)


def test_an_uploaded_photo_is_stored_and_queued_with_its_caption(api_a, tenants):
    content = sample_media("image", 30_000)
    response = upload(api_a, tenants.a, content, caption="this cut please")
    assert response.status_code == 202, response.content
    message = OutboundMessage.objects.get(pk=response.json()["id"])
    assert message.text == "this cut please" and message.status == "queued"
    media = message.media
    assert media.kind == "image" and media.file.mimetype == "image/jpeg"
    assert media.file.sha256 == hashlib.sha256(content).hexdigest()

    listed = api_a.get(outbound(tenants.a) + f"{message.pk}/media/").json()
    assert [m["sha256"] for m in listed] == [media.file.sha256]
    download = api_a.get(listed[0]["download_url"])
    assert download.status_code == 200 and b"".join(download.streaming_content) == content
    assert download["Content-Type"] == "image/jpeg"


def test_a_received_message_s_media_is_listed_and_downloaded(api_a, tenants, data):
    inbound = data["alpha"]["inbound"]
    listed = api_a.get(S.format(tenants.a.pk) + f"inbound/{inbound.pk}/media/").json()
    assert len(listed) == 1 and listed[0]["state"] == "stored"
    download = api_a.get(listed[0]["download_url"])
    assert b"".join(download.streaming_content) == b"alpha photo bytes"
    assert "attachment" in download["Content-Disposition"]


def test_the_same_key_and_file_replay_and_another_file_is_a_409(api_a, tenants):
    content = sample_media("document", 5_000)
    first = upload(api_a, tenants.a, content, name="a.pdf", key="doc-1")
    again = upload(api_a, tenants.a, content, name="a.pdf", key="doc-1")
    assert first.status_code == again.status_code == 202
    assert again["Idempotent-Replayed"] == "true" and again.json()["id"] == first.json()["id"]
    other = upload(api_a, tenants.a, sample_media("document", 6_000), name="a.pdf", key="doc-1")
    assert other.status_code == 409
    assert OutboundMessage.objects.filter(company=tenants.a).count() == 1


def test_an_image_over_whatsapp_s_limit_is_a_413_and_nothing_is_queued(api_a, tenants):
    before = OutboundMessage.objects.count()
    response = upload(api_a, tenants.a, sample_media("image", WHATSAPP_LIMITS["image"] + 1))
    assert response.status_code == 413
    assert "at most 5242880 bytes for image" in response.json()["error"]["message"]
    assert OutboundMessage.objects.count() == before and not MessageMedia.objects.filter(
        outbound__isnull=False).exists()


def test_a_file_whose_type_lies_is_a_400(api_a, tenants):
    pdf = sample_media("document", 5_000)
    response = upload(api_a, tenants.a, pdf, name="photo.jpg", kind="image")
    assert response.status_code == 400
    assert "content is application/pdf" in str(response.json())
    assert not MessageMedia.objects.filter(outbound__isnull=False).exists()


def test_a_voice_note_must_be_ogg_audio(api_a, tenants):
    response = upload(api_a, tenants.a, sample_media("image", 5_000), voice_note="true")
    assert response.status_code == 400 and "voice note" in str(response.json())
    ok = upload(api_a, tenants.a, sample_media("audio", 5_000), name="v.ogg", voice_note="true")
    assert ok.status_code == 202
    assert OutboundMessage.objects.get(pk=ok.json()["id"]).media.voice_note is True


def test_an_empty_file_is_a_400(api_a, tenants):
    response = upload(api_a, tenants.a, b"")
    assert response.status_code == 400 and "empty" in str(response.json())


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://example.com/a.jpg", "must start with https://"),
        ("https://127.0.0.1/a.jpg", "private/loopback"),
        ("https://[::ffff:10.0.0.1]/a.jpg", "private/loopback"),
    ],
)
def test_a_media_url_that_is_not_public_https_is_refused(api_a, tenants, url, reason):
    response = api_a.post(outbound(tenants.a), {"to": TO, "media": {"url": url}}, format="json")
    assert response.status_code == 400 and reason in str(response.json())


def test_a_location_is_queued(api_a, tenants):
    body = {"to": TO, "location": {"latitude": 52.52, "longitude": 13.4, "name": "Salon"}}
    response = api_a.post(outbound(tenants.a), body, format="json")
    assert response.status_code == 202
    media = OutboundMessage.objects.get(pk=response.json()["id"]).media
    assert media.kind == "location" and media.location["name"] == "Salon"
    bad = api_a.post(outbound(tenants.a), {"to": TO, "location": {"latitude": 91,
                                                                    "longitude": 0}},
                     format="json")
    assert bad.status_code == 400
