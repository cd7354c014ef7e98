"""The health dashboard: every visible company at a glance, worst first."""

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_POST

from companies.admin_times import common_zone
from companies.models import Company
from whatsapp.models import WhatsAppSession, WorkerProcess
from whatsapp.models.health import health_report
from whatsapp.models.workers import describe_worker
from whatsapp.services import control

from .sessions import live_context


def health_dashboard(request):
    companies = Company.objects.visible_to(request.user)
    if not companies.exists():
        return first_run(request)
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
    owners = {s.lease.owner for s in report.sessions if getattr(s, "lease", None)} - {""}
    processes = {w.worker_id: w for w in WorkerProcess.objects.filter(worker_id__in=owners)}
    for s in report.sessions:
        owner = s.lease.owner if getattr(s, "lease", None) else ""
        s.worker_words = describe_worker(owner, processes.get(owner), now)
    conf = settings.WHATSAPP
    context = {
        **admin.site.each_context(request),
        **live_context(reverse("admin:whatsapp_session_status")),
        "title": "WhatsApp connection health",
        "report": report,
        "now": now,
        "page_zone": common_zone(companies),
        "flap_reconnects": conf["FLAP_RECONNECTS"],
        "flap_window": conf["FLAP_WINDOW_MINUTES"],
        "down_threshold": conf["DOWN_THRESHOLD_MINUTES"],
        "managed_ids": set(Company.objects.managed_by(request.user).values_list("pk", flat=True)),
        "opts": WhatsAppSession._meta,
        "media": admin.site._registry[WhatsAppSession].media,
    }
    return TemplateResponse(request, "admin/whatsapp/health.html", context)


def first_run(request):
    """No company to show: say what to do next instead of a bare 403 (a user who
    may add companies gets a 200 and the link; anyone else a 403 that says why)."""
    can_add = request.user.has_perm("companies.add_company")
    context = {
        **admin.site.each_context(request),
        "title": "WhatsApp connection health",
        "has_company": False,
        "can_add_company": can_add,
        "opts": WhatsAppSession._meta,
        "media": admin.site._registry[WhatsAppSession].media,
    }
    return TemplateResponse(
        request, "admin/whatsapp/first_run.html", context, status=200 if can_add else 403
    )


@require_POST
def start_company_session(request, company_id):
    """Start the first session of a company that never had one (the session list
    shows existing sessions only)."""
    if not Company.objects.visible_to(request.user).filter(pk=company_id).exists():
        raise Http404("No such company (or not yours).")
    if not Company.objects.managed_by(request.user).filter(pk=company_id).exists():
        raise PermissionDenied("Only the company's owners and admins control its session.")
    try:
        session = control.start_session(
            company_id, actor=f"by {request.user.get_username()} (admin)"
        )
    except control.SessionCommandError as exc:
        messages.error(request, f"Start refused: {exc}")
        return redirect("whatsapp_health")
    messages.success(request, f"Start requested for {session.company.name}.")
    return redirect("admin:whatsapp_whatsappsession_change", session.pk)
