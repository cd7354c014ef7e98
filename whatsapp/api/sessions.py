"""Session endpoints: list and status, control (start/stop/restart/logout),
pairing (QR code, pairing code), and the connection-event history.

Views are thin: validate, resolve the company through `TenantAPIView` (404 for
another tenant's), call one service. Control works with no worker running:
the service writes the wish to the session row; a worker acts on it when it
reconciles (the channel hint only makes it sooner).
"""

import io

import segno
from django.db.models import Count
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response

from aiadmin.api.errors import Conflict
from aiadmin.api.pagination import AscendingIdCursorPagination, IdCursorPagination
from companies.api.tenancy import TenantAPIView
from companies.models import Company
from whatsapp.models import ConnectionEvent, WhatsAppSession
from whatsapp.services import control

from .serializers import (
    ConnectionEventPageSerializer,
    ConnectionEventSerializer,
    PairingCodeRequestSerializer,
    QRCodeSerializer,
    SessionSerializer,
)

TAGS = ["sessions"]
ERRORS = {
    401: OpenApiResponse(description="No, or an invalid, API key / login."),
    404: OpenApiResponse(description="No such company (or not yours)."),
}
CONTROL_ERRORS = {
    **ERRORS,
    403: OpenApiResponse(description="Your role may read but not control this session."),
    409: OpenApiResponse(description="Not possible in the session's current situation."),
}


def session_of(company):
    """The company's session row, or an unsaved stopped one if it never ran (GET has no
    side effects, so reading a status creates nothing)."""
    try:
        return company.whatsapp_session
    except WhatsAppSession.DoesNotExist:
        return WhatsAppSession(company=company)


def actor(request):
    return f"via API by {request.user}"


class SessionListView(TenantAPIView):
    queryset = Company.objects.select_related("whatsapp_session")
    company_field = "pk"
    serializer_class = SessionSerializer
    pagination_class = AscendingIdCursorPagination

    @extend_schema(
        summary="Sessions (with health) of the companies the caller may see",
        tags=TAGS,
        responses={200: SessionSerializer(many=True), **ERRORS},
    )
    def get(self, request):
        page = self.paginate_queryset(self.get_queryset())
        sessions = [session_of(company) for company in page]
        return self.get_paginated_response(SessionSerializer(sessions, many=True).data)


class SessionDetailView(TenantAPIView):
    serializer_class = SessionSerializer

    @extend_schema(
        summary="Status and health of a company's session",
        tags=TAGS,
        responses={200: SessionSerializer, **ERRORS},
    )
    def get(self, request, company_id):
        return Response(SessionSerializer(session_of(self.company)).data)


class SessionControlView(TenantAPIView):
    """Base of the POST-only control endpoints; each calls one control service."""

    serializer_class = SessionSerializer

    def check_write_access(self, request):
        self.require_manager()

    def run(self, command, request):
        try:
            session = command(self.company.pk, actor=actor(request))
        except control.SessionCommandError as exc:
            raise Conflict(str(exc), code="session_command_rejected") from None
        return Response(SessionSerializer(session).data, status=status.HTTP_202_ACCEPTED)


def control_view(name, command, summary):
    """A control endpoint calling `command` (a function of its own, so that each
    endpoint keeps its own OpenAPI summary)."""

    @extend_schema(
        summary=summary,
        tags=TAGS,
        request=None,
        responses={202: SessionSerializer, **CONTROL_ERRORS},
    )
    def post(self, request, company_id):
        return self.run(command, request)

    return type(name, (SessionControlView,), {"post": post, "__doc__": summary})


SessionStartView = control_view(
    "SessionStartView",
    control.start_session,
    "Start the session (connects, or shows a QR code if not paired)",
)
SessionStopView = control_view(
    "SessionStopView", control.stop_session, "Stop the session (stays paired)"
)
SessionRestartView = control_view(
    "SessionRestartView",
    control.restart_session,
    "Restart the session (close, then connect; also leaves replaced/failed states)",
)
SessionLogoutView = control_view(
    "SessionLogoutView",
    control.logout_session,
    "Log the device out of WhatsApp (pairing is needed again)",
)


class PairingCodeView(TenantAPIView):
    serializer_class = PairingCodeRequestSerializer

    def check_write_access(self, request):
        self.require_manager()

    @extend_schema(
        summary="Request a pairing code for a phone number (instead of scanning the QR code)",
        description="The code appears as `pairing_code` on the session status once the "
        "worker has fetched it from WhatsApp.",
        tags=TAGS,
        request=PairingCodeRequestSerializer,
        examples=[OpenApiExample("Phone", value={"phone": "+49 170 1234567"}, request_only=True)],
        responses={
            202: SessionSerializer,
            400: OpenApiResponse(description="Invalid phone."),
            **CONTROL_ERRORS,
        },
    )
    def post(self, request, company_id):
        serializer = PairingCodeRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            session = control.request_pairing_code(
                self.company.pk, serializer.validated_data["phone"], actor=actor(request)
            )
        except control.SessionCommandError as exc:
            raise Conflict(str(exc), code="session_command_rejected") from None
        return Response(SessionSerializer(session).data, status=status.HTTP_202_ACCEPTED)


class JSONOnlyNegotiation(BaseContentNegotiation):
    """Images are returned as plain responses; errors are always JSON, whatever Accept says."""

    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class QRCodeBase(TenantAPIView):
    content_negotiation_class = JSONOnlyNegotiation
    serializer_class = QRCodeSerializer

    def current_qr(self):
        session = session_of(self.company)
        if not session.qr_code:
            raise_no_qr(session)
        return session


def raise_no_qr(session):
    if session.is_paired:
        hint = "the session is paired; no QR code is needed"
    else:
        hint = (
            f"the session is {session.state}; start it and wait for state "
            "awaiting_pairing (QR codes are refreshed about every 20 seconds)"
        )
    raise NotFound(f"No QR code: {hint}.", code="no_qr_code")


QR_404 = {404: OpenApiResponse(description="No such company, or no QR code right now.")}


class QRCodeView(QRCodeBase):
    @extend_schema(
        summary="The current QR code as raw data",
        tags=TAGS,
        responses={200: QRCodeSerializer, **ERRORS, **QR_404},
    )
    def get(self, request, company_id):
        session = self.current_qr()
        return Response(
            QRCodeSerializer(
                {
                    "qr_code": session.qr_code,
                    "qr_updated_at": session.qr_updated_at,
                    "state": session.state,
                }
            ).data
        )


class QRCodeSVGView(QRCodeBase):
    @extend_schema(
        summary="The current QR code as an SVG image",
        tags=TAGS,
        responses={(200, "image/svg+xml"): OpenApiTypes.BINARY, **ERRORS, **QR_404},
    )
    def get(self, request, company_id):
        buffer = io.BytesIO()
        segno.make(self.current_qr().qr_code, micro=False).save(buffer, kind="svg", scale=4)
        return image_response(buffer.getvalue(), "image/svg+xml")


class QRCodePNGView(QRCodeBase):
    @extend_schema(
        summary="The current QR code as a PNG image",
        tags=TAGS,
        responses={(200, "image/png"): OpenApiTypes.BINARY, **ERRORS, **QR_404},
    )
    def get(self, request, company_id):
        buffer = io.BytesIO()
        segno.make(self.current_qr().qr_code, micro=False).save(buffer, kind="png", scale=8)
        return image_response(buffer.getvalue(), "image/png")


def image_response(content, content_type):
    response = HttpResponse(content, content_type=content_type)
    response["Cache-Control"] = "no-store"  # a QR code is a short-lived credential
    return response


class ConnectionEventListView(TenantAPIView):
    queryset = ConnectionEvent.objects.all()
    company_field = "session__company"
    serializer_class = ConnectionEventSerializer
    pagination_class = IdCursorPagination

    @extend_schema(
        summary="Connection-event history, newest first, with reconnection counts",
        tags=TAGS,
        responses={200: ConnectionEventPageSerializer, **ERRORS},
    )
    def get(self, request, company_id):
        queryset = self.get_queryset()
        page = self.paginate_queryset(queryset)
        paginated = self.get_paginated_response(ConnectionEventSerializer(page, many=True).data)
        session = session_of(self.company)
        by_kind = dict(queryset.order_by().values_list("kind").annotate(Count("id")))
        counts = {
            "reconnect_count": session.reconnect_count,
            "conflict_count": session.conflict_count,
            "connect_failure_count": session.connect_failure_count,
            "events_by_kind": by_kind,
        }
        return Response({"counts": counts, **paginated.data})
