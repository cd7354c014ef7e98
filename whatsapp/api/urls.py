from django.urls import path

import aiadmin.api.converters  # noqa: F401  (registers <id:...>)

from . import conversations, media, messages, sessions, turns

S = "whatsapp/sessions/<id:company_id>/"
C = S + "chats/<id:chat_id>/"

urlpatterns = [
    path("whatsapp/sessions/", sessions.SessionListView.as_view(), name="session-list"),
    path(S, sessions.SessionDetailView.as_view(), name="session-detail"),
    # The Node system's GET /api/whatsapp/sessions/{company_id}/status, versioned.
    path(S + "status", sessions.SessionDetailView.as_view(), name="session-status"),
    path(S + "start", sessions.SessionStartView.as_view(), name="session-start"),
    path(S + "stop", sessions.SessionStopView.as_view(), name="session-stop"),
    path(S + "restart", sessions.SessionRestartView.as_view(), name="session-restart"),
    path(S + "logout", sessions.SessionLogoutView.as_view(), name="session-logout"),
    path(S + "qr", sessions.QRCodeView.as_view(), name="session-qr"),
    path(S + "qr.svg", sessions.QRCodeSVGView.as_view(), name="session-qr-svg"),
    path(S + "qr.png", sessions.QRCodePNGView.as_view(), name="session-qr-png"),
    path(S + "pairing-code", sessions.PairingCodeView.as_view(), name="session-pairing-code"),
    path(S + "events", sessions.ConnectionEventListView.as_view(), name="session-events"),
    path(S + "outbound/", messages.OutboundListView.as_view(), name="outbound-list"),
    path(
        S + "outbound/<id:message_id>/",
        messages.OutboundDetailView.as_view(),
        name="outbound-detail",
    ),
    path(
        S + "outbound/<id:message_id>/media/",
        media.MessageMediaListView.as_view(direction="outbound"),
        name="outbound-media",
    ),
    path(S + "inbound/", messages.InboundListView.as_view(), name="inbound-list"),
    path(
        S + "inbound/<id:message_id>/media/",
        media.MessageMediaListView.as_view(direction="inbound"),
        name="inbound-media",
    ),
    path(
        S + "media/<id:media_id>/download",
        media.MediaDownloadView.as_view(),
        name="media-download",
    ),
    path(
        S + "inbound/<id:message_id>/", messages.InboundDetailView.as_view(), name="inbound-detail"
    ),
    path(
        S + "inbound/<id:message_id>/processing",
        messages.ProcessingStatusView.as_view(),
        name="inbound-processing",
    ),
    path(
        S + "inbound/<id:message_id>/processing/retry",
        messages.ProcessingRetryView.as_view(),
        name="inbound-processing-retry",
    ),
    path(S + "chats/", conversations.ChatListView.as_view(), name="chat-list"),
    path(C, conversations.ChatDetailView.as_view(), name="chat-detail"),
    path(C + "messages/", conversations.ChatMessagesView.as_view(), name="chat-messages"),
    path(C + "pause", conversations.ChatPauseView.as_view(), name="chat-pause"),
    path(C + "resume", conversations.ChatResumeView.as_view(), name="chat-resume"),
    path(S + "contacts/", conversations.ContactListView.as_view(), name="contact-list"),
    path(
        S + "contacts/<id:contact_id>/",
        conversations.ContactDetailView.as_view(),
        name="contact-detail",
    ),
    path(S + "turns/<id:turn_id>/reply", turns.TurnReplyView.as_view(), name="turn-reply"),
]
