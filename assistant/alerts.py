"""The assistant's findings for the alert check (WHATSAPP_ALERTS["FINDING_SOURCES"]):
a company over its monthly token budget, and a company whose model failed
FAILURE_INCIDENT_THRESHOLD times within FAILURE_WINDOW_MINUTES. Each is an
incident (opened, notified and resolved by whatsapp.services.alerts)."""

from datetime import timedelta

from django.conf import settings
from django.db.models import F, Sum

from whatsapp.models import IncidentKind
from whatsapp.services.alerts import Finding

from .models import AssistantConfig, AssistantRun, month_start


def assistant_findings(now):
    conf = settings.ASSISTANT
    found = []
    used = dict(
        AssistantRun.objects.live()
        .filter(created_at__gte=month_start(now))
        .values("company_id")
        .annotate(t=Sum(F("tokens_in") + F("tokens_out")))
        .values_list("company_id", "t")
    )
    configs = AssistantConfig.objects.select_related("company").filter(is_enabled=True)
    for config in configs.exclude(monthly_token_budget=0):
        tokens = used.get(config.company_id) or 0
        if tokens >= config.monthly_token_budget:
            found.append(
                Finding(
                    f"company:{config.company_id}",
                    IncidentKind.ASSISTANT_BUDGET,
                    f"{config.company.name}: AI assistant used {tokens} of its "
                    f"{config.monthly_token_budget} tokens this month; clients get the fixed "
                    "answer",
                    "Raise the monthly token budget on the assistant's admin page, or wait for "
                    "the next month (UTC).",
                    company_id=config.company_id,
                )
            )
    window = timedelta(minutes=conf["FAILURE_WINDOW_MINUTES"])
    names = dict(configs.values_list("company_id", "company__name"))
    for row in AssistantRun.objects.failures_since(now - window):
        if row["n"] >= conf["FAILURE_INCIDENT_THRESHOLD"] and row["company_id"] in names:
            found.append(
                Finding(
                    f"company:{row['company_id']}",
                    IncidentKind.ASSISTANT_FAILING,
                    f"{names[row['company_id']]}: AI assistant model failed {row['n']} times in "
                    f"{conf['FAILURE_WINDOW_MINUTES']:g} min; clients get the fallback message",
                    "See the assistant runs in the admin (outcome and note of each).",
                    company_id=row["company_id"],
                )
            )
    return found
