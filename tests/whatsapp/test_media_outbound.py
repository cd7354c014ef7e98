"""Sending media and locations: the real worker uploads and sends what was
queued, and the simulator stores what it receives (sha256 of the bytes, kind,
caption, voice note, file name, location)."""

import hashlib

import pytest

from whatsapp.models import MediaFile, OutboundMessage
from whatsapp.services.control import start_session
from whatsapp.services.media_outbound import queue_outbound_location, queue_outbound_media
from whatsapp.simulator import protocol

from .media_rig import MediaRig, fast_settings, media_settings
from .worker_doubles import company_fixture, run, wait_until  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True, databases="__all__")
TO = "+4917012345678"


@pytest.fixture
def rig(company, settings, tmp_path):
    # Leases are not what these tests are about: a TTL that a loaded machine cannot miss.
    fast_settings(settings, tmp_path, LEASE_TTL=15.0)
    media_settings(settings, tmp_path)
    start_session(company.pk)
    return MediaRig(tmp_path)


def a_file(tmp_path, kind, size=20_000, name=None):
    path = tmp_path / (name or f"sample-{kind}")
    path.write_bytes(protocol.sample_media(kind, size))
    return path


def sent_all():
    """Every queued message went out (sent, or already delivered); none failed."""
    Status = OutboundMessage.Status
    rows = OutboundMessage.objects.all()
    assert not rows.filter(status=Status.FAILED).exists(), list(
        rows.values_list("text", "last_error")
    )
    return not rows.filter(status__in=[Status.QUEUED, Status.SENDING]).exists()


def test_each_kind_and_a_location_are_sent_and_the_phone_receives_them(rig, company, tmp_path):
    files = {kind: a_file(tmp_path, kind) for kind in ("image", "video", "audio", "document",
                                                          "sticker")}
    queue_outbound_media(company.pk, TO, files["image"], caption="your cut", file_name="cut.jpg")
    queue_outbound_media(company.pk, TO, files["video"], caption="how it looks")
    queue_outbound_media(company.pk, TO, files["audio"], voice_note=True)
    queue_outbound_media(company.pk, TO, files["document"], file_name="prices.pdf",
                         caption="our prices")
    queue_outbound_media(company.pk, TO, files["sticker"])
    queue_outbound_location(company.pk, TO, 52.52, 13.405, name="Salon", address="Main St 1")

    async def body():
        async with rig:
            await rig.start(company)
            await wait_until(sent_all, timeout=60, what="all sent")

    run(body, timeout=90)
    received = rig.sim.sends_by_phone["4917012345678"]
    assert len(received) == 6
    by_kind = {r["media"]["kind"]: r["media"] for r in received if "media" in r}
    for kind, path in files.items():
        assert by_kind[kind]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), kind
        assert by_kind[kind]["size"] == 20_000
    assert by_kind["image"]["caption"] == "your cut"
    assert by_kind["image"]["mimetype"] == "image/jpeg"
    assert by_kind["audio"]["voice_note"] is True
    assert by_kind["document"]["file_name"] == "prices.pdf"
    (place,) = [r["location"] for r in received if "location" in r]
    assert place == {"latitude": 52.52, "longitude": 13.405, "name": "Salon",
                     "address": "Main St 1"}


def test_a_file_sent_twice_is_stored_once_and_sent_twice(rig, company, tmp_path):
    path = a_file(tmp_path, "document")
    queue_outbound_media(company.pk, TO, path, file_name="a.pdf")
    queue_outbound_media(company.pk, TO, path, file_name="b.pdf")

    async def body():
        async with rig:
            await rig.start(company)
            await wait_until(sent_all, timeout=60, what="both sent")

    run(body, timeout=90)
    assert MediaFile.objects.filter(company=company).count() == 1
    names = sorted(r["media"]["file_name"] for r in rig.sim.sends_by_phone["4917012345678"])
    assert names == ["a.pdf", "b.pdf"]
