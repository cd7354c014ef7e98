"""Where media files go: the STORAGES["media"] entry, from environment variables.

Default: the filesystem under the var directory (AIADMIN_VAR_DIR/media).
MEDIA_STORAGE=s3 selects any S3-compatible store (AWS S3, MinIO, Cloudflare R2)
through django-storages; its settings:

  MEDIA_S3_BUCKET             bucket name (required)
  MEDIA_S3_ENDPOINT_URL       e.g. https://minio.internal:9000 or R2's account URL
                              (empty: AWS itself)
  MEDIA_S3_REGION             region name (e.g. eu-central-1; R2: auto)
  MEDIA_S3_ACCESS_KEY_ID      credentials (empty: boto3's own chain: IAM role, env, files)
  MEDIA_S3_SECRET_ACCESS_KEY
  MEDIA_S3_PREFIX             key prefix inside the bucket (default: none)
  MEDIA_S3_URL_SECONDS        lifetime of the signed download URLs (default 300)
  MEDIA_S3_ADDRESSING_STYLE   path (MinIO) or virtual (default: boto3's choice)

Objects are private (no ACL, no public URL); downloads go through short-lived
signed URLs.
"""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured


def media_storage(environ, var_dir):
    """The STORAGES entry for media, from `environ` (a mapping of env vars)."""
    kind = (environ.get("MEDIA_STORAGE") or "filesystem").strip().lower()
    if kind in {"filesystem", "fs", "local"}:
        return {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {
                "location": environ.get("MEDIA_ROOT") or str(Path(var_dir) / "media"),
                "base_url": None,
                "file_permissions_mode": 0o640,
                "directory_permissions_mode": 0o750,
            },
        }
    if kind != "s3":
        raise ImproperlyConfigured(f"MEDIA_STORAGE={kind!r}: use filesystem (default) or s3.")
    bucket = (environ.get("MEDIA_S3_BUCKET") or "").strip()
    if not bucket:
        raise ImproperlyConfigured("MEDIA_STORAGE=s3 needs MEDIA_S3_BUCKET (the bucket name).")
    try:
        seconds = int(environ.get("MEDIA_S3_URL_SECONDS") or 300)
    except ValueError:
        raise ImproperlyConfigured("MEDIA_S3_URL_SECONDS must be a number of seconds.") from None
    options = {
        "bucket_name": bucket,
        "default_acl": None,
        "querystring_auth": True,
        "querystring_expire": seconds,
        "file_overwrite": True,  # names are content hashes: same name, same bytes
        "location": (environ.get("MEDIA_S3_PREFIX") or "").strip("/"),
    }
    optional = {
        "endpoint_url": "MEDIA_S3_ENDPOINT_URL",
        "region_name": "MEDIA_S3_REGION",
        "access_key": "MEDIA_S3_ACCESS_KEY_ID",
        "secret_key": "MEDIA_S3_SECRET_ACCESS_KEY",
        "addressing_style": "MEDIA_S3_ADDRESSING_STYLE",
    }
    for option, name in optional.items():
        if environ.get(name):
            options[option] = environ[name]
    return {"BACKEND": "storages.backends.s3.S3Storage", "OPTIONS": options}
