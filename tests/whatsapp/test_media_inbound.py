"""Media of received messages: the real worker downloads them from the
simulator's media server after the message is stored, and every download ends
in a clear state (stored / too_large / expired / failed: why) while the message
and its job exist whatever happens to the file."""

import hashlib

import pytest

from whatsapp.models import InboundMessage, MediaFile, MessageMedia, ProcessingJob
from whatsapp.services import media as svc
from whatsapp.services.control import start_session
from whatsapp.simulator import protocol

from .media_rig import MediaRig, fast_settings, media_settings
from .worker_doubles import company_fixture, run, wait_until  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
State = MessageMedia.State


@pytest.fixture
def rig(company, settings, tmp_path):
    # Leases are not what these tests are about: a TTL that a loaded machine cannot miss.
    fast_settings(settings, tmp_path, LEASE_TTL=15.0)
    media_settings(settings, tmp_path)
    start_session(company.pk)
    return MediaRig(tmp_path)


def media_of(wa_id):
    return MessageMedia.objects.select_related("file", "inbound").get(inbound__wa_message_id=wa_id)


def settled(*wa_ids):
    """True once every message's media reached a final state."""
    return lambda: MessageMedia.objects.filter(
        inbound__wa_message_id__in=wa_ids, state__in=MessageMedia.FINAL
    ).count() == len(wa_ids)


def scenario(rig, company, *messages, timeout=45.0):
    """Send `messages` ((kind, media options) pairs) and wait until all settled."""

    async def body():
        async with rig:
            await rig.start(company)
            ids = [await rig.send(company, kind, options) for kind, options in messages]
            await wait_until(settled(*ids), timeout=timeout, what="downloads settled")
            return ids

    return run(body, timeout=timeout + 20)


def test_each_kind_is_downloaded_stored_and_typed_by_its_content(rig, company):
    kinds = ["image", "video", "audio", "document", "sticker"]
    ids = scenario(rig, company, *[(kind, {"size": 50_000}) for kind in kinds])
    expected = {
        "image": "image/jpeg",
        "video": "video/mp4",
        "audio": "audio/ogg",
        "document": "application/pdf",
        "sticker": "image/webp",
    }
    for kind, wa_id in zip(kinds, ids, strict=True):
        media = media_of(wa_id)
        assert media.final_state == "stored", (kind, media.error)
        assert media.kind == kind and media.file.mimetype == expected[kind]
        assert media.file.size == 50_000
        with svc.open_media(media) as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == media.file.sha256
        # the message and its one job exist beside the media
        assert ProcessingJob.objects.filter(message=media.inbound).count() == 1
    assert media_of(ids[2]).voice_note is True


def test_the_same_file_sent_twice_is_stored_once_per_company(rig, company):
    content = protocol.sample_media("image", 30_000).hex()
    ids = scenario(rig, company, ("image", {"content_hex": content}),
                   ("image", {"content_hex": content}))
    first, second = media_of(ids[0]), media_of(ids[1])
    assert first.state == second.state == State.STORED
    assert first.file_id == second.file_id
    assert MediaFile.objects.filter(company=company).count() == 1
    assert svc.storage_used() == {company.pk: (1, 30_000)}


def test_expired_media_ends_expired_and_the_message_stays(rig, company):
    (wa_id,) = scenario(rig, company, ("image", {"state": "expired"}))
    media = media_of(wa_id)
    assert media.final_state == "expired" and media.file is None and media.attempts == 1
    assert "410" in media.error
    assert InboundMessage.objects.filter(wa_message_id=wa_id).count() == 1
    assert ProcessingJob.objects.filter(message__wa_message_id=wa_id).count() == 1


def test_a_failing_media_server_is_retried_with_backoff_until_it_answers(rig, company):
    (wa_id,) = scenario(rig, company, ("document", {"state": "broken", "fail_times": 2}))
    media = media_of(wa_id)
    assert media.final_state == "stored" and media.attempts == 3
    assert rig.sim.media.refused == 2 and rig.sim.media.served == 1


def test_a_media_server_that_keeps_failing_ends_failed_with_the_reason(rig, company):
    (wa_id,) = scenario(rig, company, ("audio", {"state": "broken"}))
    media = media_of(wa_id)
    assert media.state == State.FAILED and media.attempts == 3
    assert media.final_state.startswith("failed: media server answered HTTP 500")
    assert "gave up after 3 attempts" in media.error


def test_a_truncated_file_is_not_stored(rig, company):
    (wa_id,) = scenario(rig, company, ("video", {"state": "truncated", "size": 40_000}))
    media = media_of(wa_id)
    assert media.state == State.FAILED and "truncated: got 20000 of 40000 bytes" in media.error
    assert MediaFile.objects.count() == 0


def test_media_declared_too_large_is_never_downloaded(rig, company, settings):
    settings.WHATSAPP_MEDIA = {**settings.WHATSAPP_MEDIA, "MAX_BYTES": {"image": 10_000}}
    (wa_id,) = scenario(rig, company, ("image", {"size": 20_000}))
    media = media_of(wa_id)
    assert media.final_state == "too_large" and "the limit for image is 10000" in media.error
    assert rig.sim.media.served == 0


def test_media_larger_than_it_declared_stops_at_the_limit(rig, company, settings):
    settings.WHATSAPP_MEDIA = {**settings.WHATSAPP_MEDIA, "MAX_BYTES": {"image": 10_000}}
    (wa_id,) = scenario(rig, company, ("image", {"size": 3_000_000, "declared_size": 5_000}))
    media = media_of(wa_id)
    assert media.final_state == "too_large" and "limit of 10000 bytes" in media.error
    assert MediaFile.objects.count() == 0


def test_a_download_that_hangs_times_out_and_fails_after_its_attempts(rig, company, settings):
    media_settings(settings, rig.tmp, DOWNLOAD_TIMEOUT=0.3, DOWNLOAD_MAX_ATTEMPTS=2)
    (wa_id,) = scenario(rig, company, ("image", {"state": "slow", "delay": 5}))
    media = media_of(wa_id)
    assert media.state == State.FAILED and media.attempts == 2
    assert media.error.startswith("timed out after 0.3s")


def test_a_mime_type_that_lies_is_replaced_by_the_content_type(rig, company):
    pdf = protocol.sample_media("document", 5_000).hex()
    (wa_id,) = scenario(rig, company, ("image", {"content_hex": pdf, "mimetype": "image/jpeg"}))
    media = media_of(wa_id)
    assert media.state == State.STORED and media.declared_mimetype == "image/jpeg"
    assert media.file.mimetype == "application/pdf" and media.mimetype == "application/pdf"


def test_the_media_row_is_written_with_the_message_not_after_it(company, settings, tmp_path):
    """The store path alone (no worker, no download): message, job and a pending
    media row commit together; text messages get no media row."""
    from whatsapp.services.inbound import record_inbound_message
    from whatsapp.transport.build import message_event
    from whatsapp.transport.normalize import normalize_message
    from whatsapp.transport.simulator_client import message_content

    media_settings(settings, tmp_path)
    frame = protocol.inbound_frame(
        "4930900000001@s.whatsapp.net", "4915112345678", "look", kind="image",
        media={"path": "/media/x", "mimetype": "image/jpeg", "size": 10, "sha256": "00" * 32},
    )
    event = message_event(frame["id"], frame["chat"], content=message_content(frame),
                          sender_alt=frame["sender_alt"])
    outcome = record_inbound_message(company.pk, normalize_message(event))
    media = MessageMedia.objects.get(inbound_id=outcome.message_pk)
    assert media.state == State.PENDING and media.declared_size == 10 and media.kind == "image"
    assert bytes(media.descriptor)
    text = message_event("T1", "4915112345678@s.whatsapp.net", "hi")
    record_inbound_message(company.pk, normalize_message(text))
    assert MessageMedia.objects.count() == 1
