"""The health dashboard: every visible company at a glance, worst first."""

from django.conf import settings
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from companies.models import Company
from whatsapp.models import WhatsAppSession
from whatsapp.models.health import health_report

from .sessions import live_context


def health_dashboard(request):
    companies = Company.objects.visible_to(request.user)
    if not companies.exists():
        raise PermissionDenied("You belong to no company.")
    now = timezone.now()
    sessions = (
        WhatsAppSession.objects.visible_to(request.user)
        .with_health(now=now)
        .worst_first()
        .select_related("company", "lease")
    )
    report = health_report(
        sessions, companies.filter(whatsapp_session__isnull=True).order_by("name"), now=now
    )
    conf = settings.WHATSAPP
    context = {
        **admin.site.each_context(request),
        **live_context(reverse("admin:whatsapp_session_status")),
        "title": "WhatsApp connection health",
        "report": report,
        "now": now,
        "flap_reconnects": conf["FLAP_RECONNECTS"],
        "flap_window": conf["FLAP_WINDOW_MINUTES"],
        "down_threshold": conf["DOWN_THRESHOLD_MINUTES"],
        "opts": WhatsAppSession._meta,
        "media": admin.site._registry[WhatsAppSession].media,
    }
    return TemplateResponse(request, "admin/whatsapp/health.html", context)
