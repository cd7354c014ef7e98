"""The chat page's "why" panel for the assistant's replies (registered in
settings.WHATSAPP_CHAT_REPLY_EXPLAINERS: the whatsapp app does not import
the assistant). A reply is explained by the AssistantRun linked to the client
message it answers: the first reply of a turn (or of a message) answers it."""

from whatsapp.models import Author

from .models import AssistantRun


def explain_replies(company_id, replies):
    """{outbound pk: [(label, value), ...]} for the replies the assistant produced."""
    answered = {
        r.in_reply_to_id: r.pk for r in replies if r.author == Author.HANDLER and r.in_reply_to_id
    }
    if not answered:
        return {}
    runs = AssistantRun.objects.filter(
        company_id=company_id, is_test=False, message_id__in=list(answered)
    ).order_by("created_at", "pk")  # the latest run of a message wins
    return {answered[run.message_id]: run.why() for run in runs}
