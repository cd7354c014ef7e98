"""Where media live and for how long: the storage configuration (filesystem by
default, S3-compatible by environment variables), one file per company and
content, retention per company, storage used in /metrics and the admin, and
the media reference handlers read."""

from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from aiadmin.media_storage import media_storage
from companies.models import Company
from whatsapp.metrics import render_metrics
from whatsapp.models import InboundMessage, MediaFile, MessageMedia
from whatsapp.services import media as svc
from whatsapp.tasks import delete_expired_media

from .media_rig import media_settings


@pytest.fixture
def storage(settings, tmp_path):
    media_settings(settings, tmp_path)
    return tmp_path / "media"


def stored(company, content, tmp_path, days_old=0):
    path = tmp_path / f"upload-{len(content)}-{content[:4].hex()}"
    path.write_bytes(content)
    media_file = svc.store_file(company.pk, str(path))
    if days_old:
        MediaFile.objects.filter(pk=media_file.pk).update(
            last_used_at=timezone.now() - timedelta(days=days_old)
        )
    message = InboundMessage.objects.create(
        company=company, wa_message_id=f"M{MessageMedia.objects.count()}",
        chat_jid="1@s.whatsapp.net", sender_jid="1@s.whatsapp.net", sent_at=timezone.now(),
    )
    return MessageMedia.objects.create(
        company=company, inbound=message, kind="document", file=media_file,
        state=MessageMedia.State.STORED,
    )


def test_the_default_storage_is_the_filesystem_under_the_var_directory(tmp_path):
    config = media_storage({}, tmp_path)
    assert config["BACKEND"] == "django.core.files.storage.FileSystemStorage"
    assert config["OPTIONS"]["location"] == str(tmp_path / "media")


def test_s3_compatible_storage_is_configured_from_the_environment_and_signs_urls(tmp_path):
    """The real django-storages backend built from the settings, no network:
    boto3 signs URLs locally."""
    from storages.backends.s3 import S3Storage

    env = {
        "MEDIA_STORAGE": "s3",
        "MEDIA_S3_BUCKET": "salon-media",
        "MEDIA_S3_ENDPOINT_URL": "https://minio.internal:9000",
        "MEDIA_S3_REGION": "eu-central-1",
        "MEDIA_S3_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "MEDIA_S3_SECRET_ACCESS_KEY": "secret",
        "MEDIA_S3_PREFIX": "/wa/",
        "MEDIA_S3_URL_SECONDS": "120",
        "MEDIA_S3_ADDRESSING_STYLE": "path",
    }
    config = media_storage(env, tmp_path)
    assert config["BACKEND"] == "storages.backends.s3.S3Storage"
    backend = S3Storage(**config["OPTIONS"])
    assert backend.bucket_name == "salon-media" and backend.location == "wa"
    assert backend.default_acl is None and backend.querystring_auth is True
    url = backend.url("media/1/ab/abc")
    assert url.startswith("https://minio.internal:9000/salon-media/wa/media/1/ab/abc?")
    assert "X-Amz-Expires=120" in url and "X-Amz-Signature=" in url


@pytest.mark.parametrize(
    "env, problem",
    [
        ({"MEDIA_STORAGE": "s3"}, "MEDIA_S3_BUCKET"),
        ({"MEDIA_STORAGE": "s3", "MEDIA_S3_BUCKET": "b", "MEDIA_S3_URL_SECONDS": "x"},
         "MEDIA_S3_URL_SECONDS"),
        ({"MEDIA_STORAGE": "ftp"}, r"filesystem \(default\) or s3"),
    ],
)
def test_a_wrong_storage_configuration_fails_at_start_with_what_to_set(env, problem, tmp_path):
    with pytest.raises(ImproperlyConfigured, match=problem):
        media_storage(env, tmp_path)


@pytest.mark.django_db
def test_files_past_the_company_s_retention_are_deleted_and_rows_say_so(storage, tmp_path):
    keeps = Company.objects.create(name="Keeps", slug="keeps", media_retention_days=0)
    short = Company.objects.create(name="Short", slug="short", media_retention_days=7)
    old = stored(short, b"%PDF-1.4 old", tmp_path, days_old=8)
    fresh = stored(short, b"%PDF-1.4 fresh", tmp_path, days_old=2)
    kept = stored(keeps, b"%PDF-1.4 kept forever", tmp_path, days_old=400)
    old_name = old.file.storage_name

    assert delete_expired_media() == "deleted 1 media files"

    old.refresh_from_db()
    assert old.state == MessageMedia.State.DELETED and old.file is None
    assert "retention" in old.error and old.inbound_id is not None  # the message stays
    assert not (storage / old_name).exists()
    for media in (fresh, kept):
        media.refresh_from_db()
        assert media.state == MessageMedia.State.STORED
        assert (storage / media.file.storage_name).exists()


@pytest.mark.django_db
def test_storage_used_per_company_is_in_metrics_and_the_admin(storage, tmp_path, client):
    from django.contrib.auth import get_user_model

    company = Company.objects.create(name="Salon", slug="salon-media")
    stored(company, b"%PDF-1.4 " + b"x" * 991, tmp_path)
    stored(company, b"%PDF-1.4 " + b"x" * 991, tmp_path)  # the same bytes: one file
    stored(company, b"%PDF-1.4 " + b"y" * 1991, tmp_path)
    text = render_metrics()[0].decode()
    assert 'aiadmin_media_storage_bytes{company="salon-media"} 3000.0' in text
    assert 'aiadmin_media_files{company="salon-media"} 2.0' in text
    assert 'aiadmin_media{kind="document",state="stored"} 3.0' in text

    root = get_user_model().objects.create_superuser("root", "r@example.com", "pw-long-enough")
    client.force_login(root)
    page = client.get("/admin/companies/company/").content.decode()
    assert "2.9\xa0KB in 2 files" in page


@pytest.mark.django_db
def test_a_handler_reads_kind_type_size_and_bytes_through_the_reference(storage, tmp_path):
    company = Company.objects.create(name="Salon", slug="salon-ref")
    media = stored(company, b"%PDF-1.4 price list", tmp_path)
    ref = svc.media_reference(media.inbound)
    assert (ref.kind, ref.mimetype, ref.size, ref.available) == (
        "document", "application/pdf", 19, True)
    with ref.open() as fh:
        assert fh.read() == b"%PDF-1.4 price list"
    text_only = InboundMessage.objects.create(
        company=company, wa_message_id="T", chat_jid="1@s.whatsapp.net",
        sender_jid="1@s.whatsapp.net", sent_at=timezone.now(),
    )
    assert svc.media_reference(text_only) is None
