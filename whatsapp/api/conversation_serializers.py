"""Representations of contacts, chats and thread messages, and the inputs of
the conversation endpoints."""

import base64
import binascii
from datetime import datetime

from django.conf import settings
from rest_framework import serializers

from aiadmin.api.strict import StrictTypesMixin
from whatsapp.models import Chat, Contact

MAX_PAUSE_MINUTES = 7 * 24 * 60


class ContactSerializer(serializers.ModelSerializer):
    is_opted_out = serializers.BooleanField(read_only=True)

    class Meta:
        model = Contact
        fields = [
            "id",
            "phone",
            "phone_jid",
            "lid",
            "push_name",
            "push_names",
            "first_seen_at",
            "last_seen_at",
            "is_opted_out",
            "opted_out_at",
            "opted_out_how",
            "opt_outs",
            "bot_paused_until",
            "notes",
        ]
        read_only_fields = fields


class ChatSerializer(serializers.ModelSerializer):
    bot_state = serializers.SerializerMethodField(help_text="active or paused")
    paused_by = serializers.CharField(
        read_only=True, help_text="who paused the bot: phone, operator, ... ('' when not paused)"
    )
    contact = ContactSerializer(read_only=True)

    class Meta:
        model = Chat
        fields = [
            "id",
            "chat_jid",
            "is_group",
            "title",
            "contact",
            "bot_state",
            "bot_paused_until",
            "paused_by",
            "needs_human",
            "last_message_at",
            "last_message_preview",
            "unread",
            "created_at",
        ]
        read_only_fields = fields

    def get_bot_state(self, chat) -> str:
        return chat.bot_state()


class ContactDetailSerializer(ContactSerializer):
    chats = serializers.SerializerMethodField()

    class Meta(ContactSerializer.Meta):
        fields = ContactSerializer.Meta.fields + ["chats"]
        read_only_fields = fields

    def get_chats(self, contact) -> list[dict]:
        chats = contact.chats.all().order_by("-last_message_at", "-id")
        return [{k: v for k, v in ChatSerializer(c).data.items() if k != "contact"} for c in chats]


class ThreadMessageSerializer(serializers.Serializer):
    """One message of a thread, whichever side wrote it."""

    id = serializers.CharField(help_text="in-<pk> or out-<pk>")
    direction = serializers.ChoiceField(choices=["in", "out"])
    author = serializers.CharField(
        help_text="client (inbound), or handler, api, operator, phone, system"
    )
    wa_message_id = serializers.CharField()
    kind = serializers.CharField()
    text = serializers.CharField()
    push_name = serializers.CharField()
    status = serializers.CharField(
        help_text="outbound: queued ... read, failed; inbound: its processing job's status"
    )
    note = serializers.CharField(help_text="inbound: what its processing job recorded")
    at = serializers.DateTimeField()


class FilterSerializer(StrictTypesMixin, serializers.Serializer):
    search = serializers.CharField(required=False, max_length=100)


class ChatFilterSerializer(StrictTypesMixin, serializers.Serializer):
    needs_human = serializers.ChoiceField(choices=["true", "false"], required=False)


class OperatorTextSerializer(StrictTypesMixin, serializers.Serializer):
    text = serializers.CharField(
        max_length=settings.WHATSAPP["MAX_TEXT_LENGTH"], trim_whitespace=False
    )

    def validate_text(self, value):
        if not value.strip():
            raise serializers.ValidationError("The text is empty.")
        return value


class PauseSerializer(serializers.Serializer):
    minutes = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_PAUSE_MINUTES,
        help_text="Default: the company's takeover time (bot_pause_minutes).",
    )


def encode_cursor(at, side, pk):
    raw = f"{at.isoformat()}|{side}|{pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text):
    """(datetime, side, pk) of a thread cursor, or ValidationError."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        at, side, pk = raw.split("|")
        value = (datetime.fromisoformat(at), int(side), int(pk))
        if value[1] not in (0, 1) or not 0 < value[2] < 10**18 or value[0].tzinfo is None:
            raise ValueError
        return value
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise serializers.ValidationError(
            ["Invalid cursor: use the `older`/`newer` links."]
        ) from None
