from rest_framework import serializers

from aiadmin.api.strict import StrictTypesMixin
from companies.models import Company
from companies.phones import InvalidPhoneNumber, parse_phone


class CompanySerializer(StrictTypesMixin, serializers.ModelSerializer):
    class Meta:
        model = Company
        fields = [
            "id",
            "name",
            "slug",
            "is_active",
            "timezone",
            "contact_name",
            "contact_email",
            "contact_phone",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        extra_kwargs = {"timezone": {"help_text": "IANA time zone, e.g. Europe/Berlin."}}

    def validate_contact_phone(self, value):
        if not value:
            return value
        try:
            return parse_phone(value)
        except InvalidPhoneNumber as exc:
            raise serializers.ValidationError(str(exc)) from None
