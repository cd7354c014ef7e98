"""Contacts and chats in the admin. A chat's page reads like a chat: bubbles
with times, delivery ticks and who wrote each reply, a reply box (sent as an
operator: the bot pauses), pause/resume buttons; live over the admin
WebSocket ("chat.changed" hints), polling while it is down."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from companies.admin_tenancy import TenantScopedAdmin
from whatsapp.models import Author
from whatsapp.models.threads import thread_page
from whatsapp.services.conversations import (
    explain_replies,
    forget_contact,
    pause_chat,
    resume_chat,
    send_as_operator,
)
from whatsapp.services.outbound import IdempotencyConflict, InvalidOutbound, OptedOut

from .sessions import live_context

THREAD_SIZE = 100
TICKS = {
    "queued": "🕓",
    "sending": "🕓",
    "sent": "✓",
    "delivered": "✓✓",
    "read": "✓✓",
    "failed": "!",
}
WHO = {
    Author.HANDLER: "bot",
    Author.API: "API",
    Author.OPERATOR: "operator",
    Author.PHONE: "phone",
    Author.SYSTEM: "system",
}


class ContactAdmin(TenantScopedAdmin):
    list_display = [
        "__str__",
        "company",
        "phone",
        "lid",
        "last_seen_at",
        "opted_out_at",
        "opt_outs",
    ]
    list_filter = [("opted_out_at", admin.EmptyFieldListFilter)]
    search_fields = ["push_name", "phone", "phone_jid", "lid", "notes"]
    readonly_fields = [
        "company",
        "phone",
        "phone_jid",
        "lid",
        "push_name",
        "push_names",
        "first_seen_at",
        "last_seen_at",
        "opted_out_at",
        "opted_out_how",
        "opt_outs",
    ]
    fields = readonly_fields + ["bot_paused_until", "notes"]
    actions = ["forget_contacts"]

    def has_add_permission(self, request):
        return False  # contacts come from WhatsApp

    def has_delete_permission(self, request, obj=None):
        return False  # "forget" is the way: it takes their messages too

    def has_forget_permission(self, request):
        return request.user.is_superuser or self.writable_companies(request).exists()

    @admin.action(
        description="Forget selected contacts (delete their messages and data)",
        permissions=["forget"],
    )
    def forget_contacts(self, request, queryset):
        done = [forget_contact(contact) for contact in queryset]
        self.message_user(
            request,
            f"Forgot {len(done)} contact(s): {sum(d['inbound'] for d in done)} inbound and "
            f"{sum(d['outbound'] for d in done)} outbound messages deleted.",
            messages.SUCCESS,
        )


class ChatAdmin(TenantScopedAdmin):
    list_display = [
        "__str__",
        "company",
        "contact",
        "bot",
        "needs_human",
        "last_message_at",
        "unread",
    ]
    list_filter = ["needs_human", "is_group"]
    search_fields = ["chat_jid", "title", "contact__push_name", "contact__phone"]
    ordering = ["-needs_human", "-last_message_at", "-id"]  # waiting for a person first

    class Media:
        css = {"all": ["whatsapp/admin-health.css", "whatsapp/admin-chat.css"]}
        js = ["whatsapp/admin-live.js"]

    @admin.display(description="Bot")
    def bot(self, chat):
        return chat.bot_state()

    def has_add_permission(self, request):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<int:object_id>/poll.json", view(self.poll_view), name="whatsapp_chat_poll"),
            path("<int:object_id>/send/", view(self.send_view), name="whatsapp_chat_send"),
            path(
                "<int:object_id>/bot/<slug:action>/", view(self.bot_view), name="whatsapp_chat_bot"
            ),
            *super().get_urls(),
        ]

    def _chat_or_404(self, request, object_id):
        chat = self.get_object(request, str(object_id))
        if chat is None:
            raise Http404("No such chat (or not yours).")
        return chat

    def _managed_chat(self, request, object_id):
        chat = self._chat_or_404(request, object_id)
        if not self.has_change_permission(request, chat):
            raise PermissionDenied("Only the company's owners and admins write in its chats.")
        return chat

    def change_view(self, request, object_id, form_url="", extra_context=None):
        chat = self._chat_or_404(request, object_id)
        if request.method != "GET":
            return HttpResponseNotAllowed(["GET"])
        return self.render_chat(request, chat)

    def render_chat(self, request, chat, draft="", status=200):
        rows, has_older, _newer = thread_page(chat, size=THREAD_SIZE)
        why = {f"out-{pk}": rows_ for pk, rows_ in explain_replies(chat, rows).items()}
        bubbles = [{**bubble(m), "why": why.get(bubble_id(m))} for m in rows]
        context = {
            **self.admin_site.each_context(request),
            **live_context(reverse("admin:whatsapp_chat_poll", args=[chat.pk]), chat.company_id),
            "live_events": "chat.changed",
            "title": f"Chat: {chat}",
            "subtitle": None,
            "opts": self.opts,
            "chat": chat,
            "original": chat,
            "bubbles": bubbles,
            "has_older": has_older,
            "bot_paused": chat.bot_is_paused(),
            "can_write": self.has_change_permission(request, chat),
            "draft": draft,
            "media": self.media,
        }
        return TemplateResponse(
            request, "admin/whatsapp/chat/chat_page.html", context, status=status
        )

    def send_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        chat = self._managed_chat(request, object_id)
        text = request.POST.get("text", "")
        try:
            send_as_operator(chat, text, request.POST.get("key") or None)
        except (OptedOut, InvalidOutbound, IdempotencyConflict) as exc:
            self.message_user(request, f"Not sent: {exc}", messages.ERROR)
            return self.render_chat(request, chat, draft=text, status=400)
        return redirect("admin:whatsapp_chat_change", chat.pk)

    def bot_view(self, request, object_id, action):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        chat = self._managed_chat(request, object_id)
        if action == "pause":
            pause_chat(chat, Author.OPERATOR)
            self.message_user(request, "The bot is paused in this chat.")
        elif action == "resume":
            resume_chat(chat, Author.OPERATOR)
            self.message_user(request, "The bot answers this chat again.")
        else:
            raise Http404(f"Unknown action {action!r}.")
        return redirect("admin:whatsapp_chat_change", chat.pk)

    def poll_view(self, request, object_id):
        chat = self._chat_or_404(request, object_id)
        rows, _older, _newer = thread_page(chat, size=THREAD_SIZE)
        snapshot = [(b["id"], b["status"]) for b in map(bubble, rows)]
        return JsonResponse(
            {"sessions": [snapshot, chat.bot_state(), chat.needs_human], "at": timezone.now()}
        )


def bubble_id(message):
    return f"{'out' if hasattr(message, 'author') else 'in'}-{message.pk}"


def bubble(message):
    """What the chat page shows of one message."""
    inbound = not hasattr(message, "author")
    if inbound:
        job = getattr(message, "job", None)
        return {
            "id": f"in-{message.pk}",
            "side": "in",
            "who": message.push_name,
            "text": message.text,
            "kind": message.kind,
            "at": message.received_at,
            "status": job.status if job else "",
            "note": job.result
            if job and job.result.startswith(("handled", "not answered"))
            else "",
            "ticks": "",
            "deleted": message.body_deleted_at is not None,
        }
    return {
        "id": f"out-{message.pk}",
        "side": "out",
        "who": WHO.get(message.author, message.author),
        "author": message.author,
        "text": message.text,
        "kind": "text",
        "at": message.created_at,
        "status": message.status,
        "note": message.last_error if message.status == "failed" else "",
        "ticks": TICKS.get(message.status, ""),
        "read": message.status == "read",
        "deleted": message.body_deleted_at is not None,
    }
