"""The assistant in /metrics: tokens, cost and runs per company (test runs left out)."""

import pytest
from prometheus_client.parser import text_string_to_metric_families

from assistant.models import AssistantRun

pytestmark = pytest.mark.django_db


def test_metrics_report_tokens_cost_and_outcomes_per_company(client, settings, assistant):
    settings.METRICS_PUBLIC = True
    company = assistant.company
    AssistantRun.objects.create(company=company, outcome="answered", tokens_in=1000,
                                tokens_out=500, cost=assistant.cost_of(1000, 500))
    AssistantRun.objects.create(company=company, outcome="timeout", tokens_in=0, tokens_out=0)
    AssistantRun.objects.create(company=company, outcome="answered", tokens_in=9999,
                                tokens_out=9999, is_test=True)
    body = client.get("/metrics", secure=True).content.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body) for s in family.samples
    }
    slug = company.slug
    assert samples[("aiadmin_assistant_tokens_total",
                    (("company", slug), ("direction", "in")))] == 1000
    assert samples[("aiadmin_assistant_cost_usd_total", (("company", slug),))] == pytest.approx(
        0.002)
    assert samples[("aiadmin_assistant_cost_today_usd", (("company", slug),))] == pytest.approx(
        0.002)
    assert samples[("aiadmin_assistant_runs_total",
                    (("company", slug), ("outcome", "timeout")))] == 1
