from rest_framework import serializers

from aiadmin.api.strict import StrictTypesMixin
from assistant.models import AssistantConfig
from assistant.prompting import PromptTemplateError, render_prompt


class AssistantConfigSerializer(StrictTypesMixin, serializers.ModelSerializer):
    api_key = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=True,
        max_length=500,
        help_text="Write-only: stored encrypted, never returned. An empty string removes it.",
    )
    has_api_key = serializers.BooleanField(read_only=True)
    prompt_version = serializers.SerializerMethodField()

    class Meta:
        model = AssistantConfig
        exclude = ["id", "api_key_encrypted", "company"]
        read_only_fields = ["updated_at"]

    def get_prompt_version(self, config) -> str:
        try:
            return config.system_prompt()[1]
        except PromptTemplateError:
            return ""

    def validate_prompt_template(self, value):
        if value:
            try:
                render_prompt(value, {})
            except PromptTemplateError as exc:
                raise serializers.ValidationError(str(exc)) from None
        return value

    def save(self, **kwargs):
        api_key = self.validated_data.pop("api_key", None)
        config = super().save(**kwargs)
        if api_key is not None:
            config.set_api_key(api_key)
            config.save(update_fields=["api_key_encrypted"])
        return config


class UsageDaySerializer(serializers.Serializer):
    day = serializers.DateField()
    runs = serializers.IntegerField()
    failures = serializers.IntegerField()
    tokens_in = serializers.IntegerField()
    tokens_out = serializers.IntegerField()
    cost = serializers.DecimalField(max_digits=12, decimal_places=6)
