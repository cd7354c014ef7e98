"""Session list and session page. Reads rows (annotated by the model's
queryset methods); every action calls the control services the API uses.

Tenancy (companies.admin_tenancy.TenantScopedAdmin, the base of every model
admin): a user sees the sessions of the companies they belong to
(`Company.objects.visible_to`; membership is enough here, no model
permission needed) and controls those where they are owner or admin
(`Company.objects.managed_by`); superusers see and control all. A foreign or
unknown session is a 404, a refused action a 403. Every view below gets its
session from `get_queryset` and its right to act from `has_change_permission`.
"""

import segno
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Max, OuterRef, Subquery
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.template.loader import render_to_string
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.timesince import timesince

from companies.admin_tenancy import TenantScopedAdmin
from companies.admin_times import company_time
from whatsapp.models import (
    InboundMessage,
    OutboundMessage,
    ProcessingJob,
    SessionState,
    WhatsAppSession,
    WorkerProcess,
)
from whatsapp.models.health import TIMELINE_WINDOWS, reconnect_reasons, state_timeline
from whatsapp.models.workers import describe_worker
from whatsapp.services import control

from .forms import PairingCodeForm

ACTIONS = {
    "start": ("Start", control.start_session),
    "stop": ("Stop", control.stop_session),
    "restart": ("Restart", control.restart_session),
    "logout": ("Log out", control.logout_session),
}
LIVE_WS_PATH = "/ws/admin/whatsapp/"


def live_context(poll_url, company_id=""):
    """What the live script needs (see static/whatsapp/admin-live.js)."""
    return {
        "live_ws_path": LIVE_WS_PATH,
        "live_poll_url": poll_url,
        "live_poll_seconds": settings.WHATSAPP["ADMIN_POLL_SECONDS"],
        "live_tick_seconds": settings.WHATSAPP["ADMIN_LIVE_TICK_SECONDS"],
        "live_company": company_id,
    }


def live_snapshots(user, session_id=None):
    """Small per-session records the pages poll while their WebSocket is down:
    any difference from the last poll makes the page re-read itself."""
    rows = (
        WhatsAppSession.objects.visible_to(user)
        .select_related("lease")
        .annotate(last_event_id=Max("events__id"))
        .order_by("company_id")
    )
    if session_id is not None:
        # The session page also lists recent messages and their jobs: notice those too.
        def latest(queryset, field):
            return Subquery(queryset.order_by(f"-{field}").values(field)[:1])

        company = OuterRef("company_id")
        rows = rows.filter(pk=session_id).annotate(
            last_inbound_id=latest(InboundMessage.objects.filter(company=company), "id"),
            last_outbound_change=latest(
                OutboundMessage.objects.filter(company=company), "updated_at"
            ),
            last_job_change=latest(
                ProcessingJob.objects.filter(message__company=company).exclude(
                    finished_at=None
                ),
                "finished_at",
            ),
        )
    return [s.live_snapshot() for s in rows]


class HasErrorsFilter(admin.SimpleListFilter):
    title = "has errors"
    parameter_name = "errors"

    def lookups(self, request, model_admin):
        return [("24h", "In the last 24 h"), ("any", "Ever"), ("none", "None")]

    def queryset(self, request, queryset):
        if self.value() == "24h":
            since = timezone.now() - timezone.timedelta(hours=24)
            return queryset.filter(last_error_at__gte=since)
        if self.value() == "any":
            return queryset.exclude(last_error="")
        if self.value() == "none":
            return queryset.filter(last_error="")
        return queryset


class WhatsAppSessionAdmin(TenantScopedAdmin):
    # What fits 1400 px: the rest (conflicts, failures, worker, duplicates) is on the
    # session page.
    list_display = [
        "company_and_phone",
        "state_badge",
        "up_or_down",
        "reconnects_last_hour",
        "reconnects_last_day",
        "last_error_short",
        "messages",
    ]
    list_display_links = ["company_and_phone"]
    list_filter = ["state", HasErrorsFilter, "desired_state"]
    search_fields = ["company__name", "phone", "jid"]
    list_select_related = ["company", "lease"]
    list_per_page = 50
    actions = ["start_selected", "stop_selected", "restart_selected"]
    change_list_template = "admin/whatsapp/whatsappsession/change_list.html"

    class Media:
        css = {"all": ["whatsapp/admin-health.css"]}
        js = ["whatsapp/admin-live.js"]

    # --- tenancy -------------------------------------------------------------
    def get_queryset(self, request):
        qs = WhatsAppSession.objects.with_health()
        if not request.user.is_superuser:
            qs = self.scoped(qs, self.readable_companies(request))
        return qs.select_related("company", "lease").order_by(*self.get_ordering(request))

    def get_ordering(self, request):
        return ["-health_rank", "company__name"]

    # Membership alone grants these (no model permission needed).
    def has_module_permission(self, request):
        # A superuser sees it before any company exists (the list says what to do).
        return request.user.is_superuser or self.readable_companies(request).exists()

    def has_view_permission(self, request, obj=None):
        return self._allowed(request, obj, True, self.readable_companies(request))

    def has_change_permission(self, request, obj=None):
        return self._allowed(request, obj, True, self.writable_companies(request))

    def has_add_permission(self, request):
        return False  # a session is created by starting it

    def has_delete_permission(self, request, obj=None):
        return False  # its history is the point; stop it instead

    # --- list columns --------------------------------------------------------
    @admin.display(description="Company", ordering="company__name")
    def company_and_phone(self, obj):
        if obj.phone:
            return format_html("{}<br><small>{}</small>", obj.company.name, obj.phone)
        return obj.company.name

    @admin.display(description="State", ordering="state")
    def state_badge(self, obj):
        pending = obj.pending()
        return format_html(
            '<span class="wa-badge wa-state-{}" title="health: {}">{}</span>{}',
            obj.state,
            obj.health(),
            obj.get_state_display(),
            format_html(' <span class="wa-pending">{}</span>', pending) if pending else "",
        )

    @admin.display(description="In / out", ordering="messages_in")
    def messages(self, obj):
        return format_html(
            '<span data-counter="messages_in">{}</span> / '
            '<span data-counter="messages_out">{}</span>',
            obj.messages_in,
            obj.messages_out,
        )

    @admin.display(description="Up / down for", ordering="state_changed_at")
    def up_or_down(self, obj):
        if obj.connected_since and obj.state == "connected":
            return format_html(
                '<span title="since {}">up {}</span>',
                company_time(obj.connected_since, obj.company),
                timesince(obj.connected_since),
            )
        if obj.down_since:
            return format_html(
                '<span class="wa-down" title="since {}">down {}</span>',
                company_time(obj.down_since, obj.company),
                timesince(obj.down_since),
            )
        return "-"

    @admin.display(description="Reconn. 1 h", ordering="reconnects_1h")
    def reconnects_last_hour(self, obj):
        return obj.reconnects_1h

    @admin.display(description="Reconn. 24 h", ordering="reconnects_24h")
    def reconnects_last_day(self, obj):
        return obj.reconnects_24h

    @admin.display(description="Last error", ordering="last_error_at")
    def last_error_short(self, obj):
        if not obj.last_error:
            return "-"
        return format_html(
            "{}<br><small>{}{}</small>",
            render_to_string(
                "admin/whatsapp/includes/error.html",
                {"w": obj.last_error_words, "resolved": obj.error_is_resolved},
            ),
            time_ago(obj.last_error_at, obj.company),
            "; resolved: connected again since" if obj.error_is_resolved else "",
        )

    # --- bulk actions (the same services, one company at a time) ------------
    def _bulk(self, request, queryset, action):
        label, service = ACTIONS[action]
        done, refused = [], []
        # The base's response_action left only the sessions the user manages.
        for session in queryset.select_related("company"):
            try:
                service(session.company_id, actor=self.actor(request))
            except control.SessionCommandError as exc:
                refused.append(f"{session.company.name} ({exc})")
            else:
                done.append(session.company.name)
        if done:
            self.message_user(request, f"{label} requested for: {', '.join(done)}.")
        if refused:
            self.message_user(
                request, f"{label} refused for: {', '.join(refused)}.", messages.ERROR
            )

    @admin.action(description="Start selected sessions")
    def start_selected(self, request, queryset):
        self._bulk(request, queryset, "start")

    @admin.action(description="Stop selected sessions")
    def stop_selected(self, request, queryset):
        self._bulk(request, queryset, "stop")

    @admin.action(description="Restart selected sessions")
    def restart_selected(self, request, queryset):
        self._bulk(request, queryset, "restart")

    @staticmethod
    def actor(request):
        return f"by {request.user.get_username()} (admin)"

    # --- session page, its actions and the polling endpoint ----------------
    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("status.json", view(self.status_view), name="whatsapp_session_status"),
            path(
                "<int:object_id>/status.json",
                view(self.status_view),
                name="whatsapp_session_status_one",
            ),
            path(
                "<int:object_id>/action/<slug:action>/",
                view(self.action_view),
                name="whatsapp_session_action",
            ),
            path("<int:object_id>/pair/", view(self.pair_view), name="whatsapp_session_pair"),
            *super().get_urls(),
        ]

    def changelist_view(self, request, extra_context=None):
        context = live_context(reverse("admin:whatsapp_session_status"))
        context["has_company"] = self.readable_companies(request).exists()
        context["can_add_company"] = request.user.has_perm("companies.add_company")
        context.update(extra_context or {})
        return super().changelist_view(request, extra_context=context)

    def _session_or_404(self, request, object_id):
        # get_object: an id that is not a number ("abc" in the URL) is "not found", not a 500.
        session = self.get_object(request, str(object_id))
        if session is None:
            raise Http404("No such WhatsApp session (or not yours).")
        return session

    def change_view(self, request, object_id, form_url="", extra_context=None):
        session = self._session_or_404(request, object_id)  # foreign: 404 whatever the method
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        return self.render_session_page(request, session, PairingCodeForm())

    def render_session_page(self, request, session, pairing_form, status=200):
        now = timezone.now()
        window = request.GET.get("window", "24h")
        if window not in TIMELINE_WINDOWS:
            window = "24h"
        company = session.company
        context = {
            **self.admin_site.each_context(request),
            **live_context(
                reverse("admin:whatsapp_session_status_one", args=[session.pk]), company.pk
            ),
            "title": f"WhatsApp session: {company.name}",
            "subtitle": None,
            "opts": self.opts,
            "session": session,
            "original": session,
            "health": session.health(now=now),
            "problems": session.problems(now=now),
            "timeline": state_timeline(session, now=now, window=window),
            "timeline_window": window,
            "timeline_windows": [(key, f"{key[:-1]} {key[-1]}") for key in TIMELINE_WINDOWS],
            "reasons": reconnect_reasons(session, now=now),
            "worker": worker_of(session, now),
            "events": session.events.all()[:25],
            "inbound": company.inbound_messages.select_related("job")[:10],
            "outbound": company.outbound_messages.all()[:10],
            "qr_svg": qr_svg(session.qr_code),
            "can_manage": self.has_change_permission(request, session),
            "pairing_form": pairing_form,
            "actions_available": [(k, ACTIONS[k][0]) for k in session.available_actions()],
            "pending": session.pending(),
            "show_pairing_form": not session.is_paired and session.state != SessionState.CONNECTED,
            "media": self.media,
        }
        return TemplateResponse(
            request, "admin/whatsapp/whatsappsession/session_page.html", context, status=status
        )

    def _managed_session(self, request, object_id):
        if request.method != "POST":
            raise PermissionDenied("Session actions must be POSTed.")
        session = self._session_or_404(request, object_id)
        if not self.has_change_permission(request, session):
            raise PermissionDenied("Only the company's owners and admins control its session.")
        return session

    def action_view(self, request, object_id, action):
        if action not in ACTIONS:
            raise Http404(f"Unknown action {action!r}.")
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        session = self._managed_session(request, object_id)
        label, service = ACTIONS[action]
        try:
            service(session.company_id, actor=self.actor(request))
        except control.SessionCommandError as exc:
            self.message_user(request, f"{label} refused: {exc}", messages.ERROR)
        else:
            self.message_user(request, f"{label} requested for {session.company.name}.")
        return redirect("admin:whatsapp_whatsappsession_change", session.pk)

    def pair_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        session = self._managed_session(request, object_id)
        form = PairingCodeForm(request.POST)
        if not form.is_valid():
            return self.render_session_page(request, session, form, status=400)
        try:
            control.request_pairing_code(
                session.company_id, form.cleaned_data["phone"], actor=self.actor(request)
            )
        except control.SessionCommandError as exc:
            form.add_error(None, str(exc))
            return self.render_session_page(request, session, form, status=400)
        self.message_user(
            request,
            f"Pairing code requested for {form.cleaned_data['phone']}; it appears here "
            "as soon as WhatsApp issues it.",
        )
        return redirect("admin:whatsapp_whatsappsession_change", session.pk)

    def status_view(self, request, object_id=None):
        if not self.has_view_permission(request):
            raise PermissionDenied
        if object_id is not None:
            self._session_or_404(request, object_id)
        return JsonResponse(
            {"sessions": live_snapshots(request.user, object_id), "at": timezone.now()}
        )


def time_ago(value, company):
    """'3 minutes ago', the exact time in the company's zone as its tooltip."""
    if not value:
        return "-"
    return format_html(
        '<time datetime="{}" title="{}">{} ago</time>',
        value.isoformat(),
        company_time(value, company),
        timesince(value),
    )


def worker_of(session, now=None):
    """The session's worker in words (models/workers.describe_worker)."""
    lease = getattr(session, "lease", None)
    owner = lease.owner if lease is not None else ""
    process = WorkerProcess.objects.filter(worker_id=owner).first() if owner else None
    return describe_worker(owner, process, now)


def qr_svg(data):
    """The QR code as inline SVG (segno), or '' when there is none."""
    if not data:
        return ""
    return segno.make(data, error="m").svg_inline(scale=4, border=2)
