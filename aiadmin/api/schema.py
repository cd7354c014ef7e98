"""OpenAPI generation: every operation documents the one error shape for the
errors it can answer with (400/401/403/404/429, and 413/415 for bodies), so
clients and schemathesis see what the API really returns."""

from drf_spectacular.openapi import AutoSchema
from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    status = serializers.IntegerField()
    code = serializers.CharField(help_text="Machine-readable, e.g. not_found, invalid, throttled.")
    message = serializers.CharField(help_text="For people: what went wrong and what to do.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Validation errors by field (only for code `invalid`).",
    )


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


DESCRIPTIONS = {
    "400": "Invalid input; `error.fields` names each field.",
    "401": "No credentials, or an invalid, revoked or expired API key.",
    "403": "Authenticated, but not allowed to do this.",
    "404": "No such object for this caller (another company's objects are 404 too).",
    "409": "Not possible in the current state.",
    "413": "The request body is too large.",
    "415": "The body must be JSON (Content-Type: application/json).",
    "429": "Rate limit reached; retry after `Retry-After` seconds.",
}
ALWAYS = ["400", "401", "403", "404", "429"]
WITH_BODY = ["413", "415"]


class APIAutoSchema(AutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response" or not self.view.authentication_classes:
            return responses  # the unauthenticated health check documents its own
        codes = ALWAYS + (WITH_BODY if self.method in ("POST", "PUT", "PATCH") else [])
        codes += [code for code in responses if code in DESCRIPTIONS and code not in codes]
        for code in codes:
            existing = responses.get(code) or {}
            if existing.get("content"):
                continue
            response = self._get_response_for_code(ErrorSerializer, code, direction=direction)
            response["description"] = existing.get("description") or DESCRIPTIONS[code]
            responses[code] = response
        return responses
