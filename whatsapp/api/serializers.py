"""Representations of sessions, connection events and messages, and the input
serializers that validate what callers send (clear 400s, field by field)."""

from django.conf import settings
from rest_framework import serializers

from aiadmin.api.strict import StrictTypesMixin
from companies.phones import InvalidPhoneNumber, default_region, parse_phone
from whatsapp.models import (
    ConnectionEvent,
    InboundMessage,
    MessageKind,
    OutboundMessage,
    ProcessingJob,
    WhatsAppSession,
)
from whatsapp.transport.jids import recipient_jid


class SessionSerializer(serializers.ModelSerializer):
    company_id = serializers.IntegerField(read_only=True)
    company_name = serializers.CharField(source="company.name", read_only=True)
    health = serializers.SerializerMethodField(
        help_text="ok, warning, error, or idle (not meant to run)."
    )
    is_paired = serializers.BooleanField(read_only=True)
    has_qr_code = serializers.SerializerMethodField()

    class Meta:
        model = WhatsAppSession
        fields = [
            "company_id",
            "company_name",
            "state",
            "desired_state",
            "health",
            "is_paired",
            "jid",
            "phone",
            "push_name",
            "state_changed_at",
            "connected_since",
            "disconnected_since",
            "last_event_at",
            "ban_expires_at",
            "last_error",
            "last_error_at",
            "has_qr_code",
            "qr_updated_at",
            "pairing_phone",
            "pairing_code",
            "pairing_code_at",
            "consecutive_failures",
            "next_connect_at",
            "reconnect_count",
            "conflict_count",
            "connect_failure_count",
            "messages_in",
            "messages_out",
            "duplicates_blocked",
            "events_ignored",
            "restart_requested_at",
            "logout_requested_at",
            "pairing_requested_at",
        ]
        read_only_fields = fields

    def get_health(self, session) -> str:
        return session.health(settings.WHATSAPP["WATCHDOG_SILENCE"])

    def get_has_qr_code(self, session) -> bool:
        return bool(session.qr_code)


class QRCodeSerializer(serializers.Serializer):
    qr_code = serializers.CharField(help_text="The raw QR payload to render or scan.")
    qr_updated_at = serializers.DateTimeField(allow_null=True)
    state = serializers.CharField()


class PairingCodeRequestSerializer(StrictTypesMixin, serializers.Serializer):
    phone = serializers.CharField(
        max_length=32,
        help_text="The phone number of the WhatsApp account to link, e.g. +49 170 1234567.",
    )

    def validate_phone(self, value):
        try:
            return parse_phone(value)
        except InvalidPhoneNumber as exc:
            raise serializers.ValidationError(str(exc)) from None


class ConnectionEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConnectionEvent
        fields = ["id", "kind", "reason", "state", "created_at"]


class ReconnectionCountsSerializer(serializers.Serializer):
    reconnect_count = serializers.IntegerField()
    conflict_count = serializers.IntegerField()
    connect_failure_count = serializers.IntegerField()
    events_by_kind = serializers.DictField(child=serializers.IntegerField())


class ConnectionEventPageSerializer(serializers.Serializer):
    counts = ReconnectionCountsSerializer()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ConnectionEventSerializer(many=True)


class ProcessingJobSerializer(serializers.ModelSerializer):
    latency_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = ProcessingJob
        fields = [
            "status",
            "attempts",
            "enqueue_count",
            "handler",
            "result",
            "error",
            "created_at",
            "enqueued_at",
            "started_at",
            "finished_at",
            "latency_seconds",
        ]


class InboundMessageSerializer(serializers.ModelSerializer):
    processing = ProcessingJobSerializer(source="job", read_only=True, allow_null=True)

    class Meta:
        model = InboundMessage
        fields = [
            "id",
            "wa_message_id",
            "chat_jid",
            "sender_jid",
            "sender_phone",
            "sender_lid",
            "push_name",
            "kind",
            "text",
            "is_group",
            "sent_at",
            "received_at",
            "redeliveries",
            "processing",
        ]


class InboundFilterSerializer(serializers.Serializer):
    """Query parameters of the inbound list; each is optional."""

    phone = serializers.CharField(
        required=False,
        max_length=32,
        help_text="Sender's phone number (any format; matched in E.164).",
    )
    received_after = serializers.DateTimeField(required=False, help_text="ISO 8601; inclusive.")
    received_before = serializers.DateTimeField(required=False, help_text="ISO 8601; exclusive.")
    status = serializers.ChoiceField(
        choices=ProcessingJob.Status.choices,
        required=False,
        help_text="Status of the message's processing job.",
    )
    kind = serializers.ChoiceField(choices=MessageKind.choices, required=False)

    def validate_phone(self, value):
        try:
            return parse_phone(value)
        except InvalidPhoneNumber as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate(self, attrs):
        after, before = attrs.get("received_after"), attrs.get("received_before")
        if after and before and after >= before:
            raise serializers.ValidationError(
                {"received_before": ["Must be later than received_after."]}
            )
        return attrs

    def filter(self, queryset):
        data = self.validated_data
        if "phone" in data:
            queryset = queryset.filter(sender_phone=data["phone"])
        if "received_after" in data:
            queryset = queryset.filter(received_at__gte=data["received_after"])
        if "received_before" in data:
            queryset = queryset.filter(received_at__lt=data["received_before"])
        if "status" in data:
            queryset = queryset.filter(job__status=data["status"])
        if "kind" in data:
            queryset = queryset.filter(kind=data["kind"])
        return queryset


class OutboundMessageSerializer(serializers.ModelSerializer):
    class Meta:
        model = OutboundMessage
        fields = [
            "id",
            "to_jid",
            "to_phone",
            "text",
            "status",
            "attempts",
            "last_error",
            "wa_message_id",
            "idempotency_key",
            "created_at",
            "sent_at",
            "updated_at",
        ]


class SendTextSerializer(StrictTypesMixin, serializers.Serializer):
    to = serializers.CharField(
        max_length=128,
        help_text="A phone number (+49 170 1234567) or a JID (phone, @lid or group @g.us).",
    )
    text = serializers.CharField(
        max_length=settings.WHATSAPP["MAX_TEXT_LENGTH"],
        trim_whitespace=False,
        help_text=f"Up to {settings.WHATSAPP['MAX_TEXT_LENGTH']} characters.",
    )

    def validate_to(self, value):
        try:
            recipient_jid(value, default_region())
        except ValueError as exc:  # InvalidRecipient, InvalidPhoneNumber
            raise serializers.ValidationError(f"Invalid recipient: {exc}") from None
        return value.strip()

    def validate_text(self, value):
        if not value.strip():
            raise serializers.ValidationError("The text is empty.")
        return value
