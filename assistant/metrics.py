"""The assistant in /metrics (registered through METRICS_EXTRA_COLLECTORS):
tokens, cost and runs per company from AssistantRun rows (computed at scrape
time, like the rest of /metrics). "Try it" runs are left out."""

from django.db.models import Count, Sum
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .models import AssistantRun, Outcome


class AssistantCollector:
    def describe(self):
        return []

    def collect(self):
        runs = AssistantRun.objects.live()
        tokens = CounterMetricFamily(
            "aiadmin_assistant_tokens",
            "Model tokens used by the AI assistant.",
            labels=["company", "direction"],
        )
        cost = CounterMetricFamily(
            "aiadmin_assistant_cost_usd",
            "What the AI assistant's tokens cost (USD, the company's prices).",
            labels=["company"],
        )
        for slug, t_in, t_out, usd in (
            runs.values("company__slug")
            .annotate(i=Sum("tokens_in"), o=Sum("tokens_out"), c=Sum("cost"))
            .values_list("company__slug", "i", "o", "c")
        ):
            tokens.add_metric([slug, "in"], t_in or 0)
            tokens.add_metric([slug, "out"], t_out or 0)
            cost.add_metric([slug], float(usd or 0))
        yield tokens
        yield cost

        today = GaugeMetricFamily(
            "aiadmin_assistant_cost_today_usd",
            "The AI assistant's cost since 00:00 UTC.",
            labels=["company"],
        )
        start = timezone.now().replace(hour=0, minute=0, second=0, microsecond=0)
        for slug, usd in (
            runs.filter(created_at__gte=start)
            .values("company__slug")
            .annotate(c=Sum("cost"))
            .values_list("company__slug", "c")
        ):
            today.add_metric([slug], float(usd or 0))
        yield today

        outcomes = CounterMetricFamily(
            "aiadmin_assistant_runs",
            "AI assistant turns by outcome.",
            labels=["company", "outcome"],
        )
        for slug, outcome, n in (
            runs.values("company__slug", "outcome")
            .annotate(n=Count("pk"))
            .values_list("company__slug", "outcome", "n")
        ):
            if outcome in Outcome.values:
                outcomes.add_metric([slug, outcome], n)
        yield outcomes
