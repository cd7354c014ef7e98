"""Media over the API: sending files and locations, listing and downloading a
message's media. Every view is a TenantAPIView: another company's message or
media is a 404.

Sending shares POST .../outbound/ with texts (messages.OutboundListView):
  * multipart/form-data: to, file, kind?, caption?, file_name?, voice_note?
  * JSON: {"to", "media": {"url", "kind"?, "caption"?, "file_name"?, "voice_note"?}}
    -- the server fetches the https URL (webhook address rules, redirects checked)
  * JSON: {"to", "location": {"latitude", "longitude", "name"?, "address"?}}
The file is checked (WhatsApp's size limit per kind: 413; content type by
content: 400) before anything is queued. Idempotency-Key works as for texts.
"""

import os

from django.http import FileResponse, HttpResponseRedirect
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response

from aiadmin.api.errors import Conflict, PayloadTooLarge
from companies.api.tenancy import TenantAPIView
from whatsapp.models import InboundMessage, OutboundMessage
from whatsapp.models.media import MessageMedia
from whatsapp.services import media as media_svc
from whatsapp.services.media_outbound import (
    MediaTooLarge,
    fetch_media_url,
    max_upload_bytes,
    queue_outbound_location,
    queue_outbound_media,
)
from whatsapp.services.outbound import IdempotencyConflict, InvalidOutbound
from whatsapp.transport.media import MEDIA_KIND_CHOICES

TAGS = ["media"]
MULTIPART_OVERHEAD = 64 * 1024


class MessageMediaSerializer(serializers.ModelSerializer):
    mimetype = serializers.CharField(read_only=True)
    size = serializers.IntegerField(read_only=True)
    sha256 = serializers.SerializerMethodField()
    final_state = serializers.CharField(read_only=True)
    download_url = serializers.SerializerMethodField()

    class Meta:
        model = MessageMedia
        fields = [
            "id", "kind", "state", "final_state", "error", "mimetype", "declared_mimetype",
            "size", "sha256", "file_name", "voice_note", "location", "attempts", "created_at",
            "stored_at", "download_url",
        ]

    def get_sha256(self, media) -> str:
        return media.file.sha256 if media.file_id else ""

    def get_download_url(self, media) -> str:
        if not media.file_id:
            return ""
        return reverse(
            "api:media-download", kwargs={"company_id": media.company_id, "media_id": media.pk}
        )


class MediaPartSerializer(serializers.Serializer):
    url = serializers.URLField(max_length=2000)
    kind = serializers.ChoiceField(choices=MEDIA_KIND_CHOICES, required=False)
    caption = serializers.CharField(required=False, allow_blank=True, max_length=1024)
    file_name = serializers.CharField(required=False, allow_blank=True, max_length=240)
    voice_note = serializers.BooleanField(required=False, default=False)


class LocationPartSerializer(serializers.Serializer):
    latitude = serializers.FloatField(min_value=-90, max_value=90)
    longitude = serializers.FloatField(min_value=-180, max_value=180)
    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    address = serializers.CharField(required=False, allow_blank=True, max_length=500)


class SendMediaSerializer(serializers.Serializer):
    to = serializers.CharField(max_length=128)
    media = MediaPartSerializer(required=False)
    location = LocationPartSerializer(required=False)

    def validate(self, attrs):
        if ("media" in attrs) == ("location" in attrs):
            raise serializers.ValidationError("Give either media or location.")
        return attrs


class UploadSerializer(serializers.Serializer):
    to = serializers.CharField(max_length=128)
    file = serializers.FileField(allow_empty_file=True)
    kind = serializers.ChoiceField(choices=MEDIA_KIND_CHOICES, required=False)
    caption = serializers.CharField(required=False, allow_blank=True, max_length=1024)
    file_name = serializers.CharField(required=False, allow_blank=True, max_length=240)
    voice_note = serializers.BooleanField(required=False, default=False)


def is_media_request(request):
    """A multipart upload, or JSON naming media or a location (else: a text)."""
    if request.content_type.startswith("multipart/"):
        return True
    data = request.data
    return isinstance(data, dict) and ("media" in data or "location" in data)


def send_media(view, request, idempotency_key):
    """POST .../outbound/ with a file, a media URL or a location: (message, created)."""
    company_id = view.company.pk
    try:
        if request.content_type.startswith("multipart/"):
            return _send_upload(company_id, request, idempotency_key)
        serializer = SendMediaSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        if "location" in data:
            return queue_outbound_location(
                company_id, data["to"], idempotency_key=idempotency_key, **data["location"]
            )
        part = data["media"]
        path = fetch_media_url(part["url"])
        try:
            return queue_outbound_media(
                company_id, data["to"], path, kind=part.get("kind"),
                caption=part.get("caption", ""),
                file_name=part.get("file_name") or os.path.basename(part["url"].split("?")[0]),
                voice_note=part["voice_note"], idempotency_key=idempotency_key,
            )
        finally:
            os.unlink(path)
    except MediaTooLarge as exc:
        raise PayloadTooLarge(str(exc)) from None
    except InvalidOutbound as exc:
        raise exceptions.ValidationError({"non_field_errors": [str(exc)]}) from None
    except IdempotencyConflict:
        raise Conflict(
            f"The Idempotency-Key {idempotency_key!r} was already used for a different message. "
            "Use a new key for a new message.",
            code="idempotency_key_reused",
        ) from None


def _send_upload(company_id, request, idempotency_key):
    length = request.META.get("CONTENT_LENGTH") or "0"
    limit = max_upload_bytes() + MULTIPART_OVERHEAD
    if length.isdigit() and int(length) > limit:
        raise MediaTooLarge(f"the request is {length} bytes; files are at most {limit} bytes")
    serializer = UploadSerializer(data=request.data)
    serializer.is_valid(raise_exception=True)
    data = serializer.validated_data
    upload = data["file"]
    path = media_svc.new_temp_path("upload-")
    try:
        with open(path, "wb") as fh:
            for chunk in upload.chunks(media_svc.CHUNK):
                fh.write(chunk)
        return queue_outbound_media(
            company_id, data["to"], path, kind=data.get("kind"), caption=data.get("caption", ""),
            file_name=data.get("file_name") or upload.name, voice_note=data["voice_note"],
            idempotency_key=idempotency_key,
        )
    finally:
        os.unlink(path)


class MessageMediaListView(TenantAPIView):
    """The media of one message (inbound or outbound, by the URL's kind)."""

    queryset = MessageMedia.objects.select_related("file")
    serializer_class = MessageMediaSerializer
    direction = "inbound"
    pagination_class = None

    @extend_schema(
        summary="The media of one message (state, type, size, SHA-256, download link)",
        tags=TAGS,
        responses={200: MessageMediaSerializer(many=True), 404: OpenApiResponse()},
    )
    def get(self, request, company_id, message_id):
        model = InboundMessage if self.direction == "inbound" else OutboundMessage
        if not model.objects.filter(company=self.company, pk=message_id).exists():
            raise exceptions.NotFound("No such message.")
        media = self.get_queryset().filter(**{f"{self.direction}_id": message_id})
        return Response(MessageMediaSerializer(media, many=True).data)


class MediaDownloadView(TenantAPIView):
    queryset = MessageMedia.objects.select_related("file")
    serializer_class = MessageMediaSerializer
    lookup_url_kwarg = "media_id"

    @extend_schema(
        summary="Download a stored media file (S3: a redirect to a short-lived signed URL)",
        tags=TAGS,
        responses={
            (200, "application/octet-stream"): OpenApiResponse(description="The file."),
            302: OpenApiResponse(description="Signed URL of the S3-compatible storage."),
            404: OpenApiResponse(description="No such media, or no stored file."),
        },
    )
    def get(self, request, company_id, media_id):
        media = self.get_object()
        if media.file_id is None:
            raise exceptions.NotFound(f"This media has no stored file ({media.final_state}).")
        signed = media_svc.download_url(media)
        if signed:
            return HttpResponseRedirect(signed)
        response = FileResponse(
            media_svc.open_media(media),
            content_type=media.file.mimetype,
            as_attachment=True,
            filename=media.file_name or f"{media.kind}-{media.pk}",
        )
        response["X-Content-Type-Options"] = "nosniff"
        response["Content-Security-Policy"] = "default-src 'none'; sandbox"
        response.status_code = status.HTTP_200_OK
        return response
