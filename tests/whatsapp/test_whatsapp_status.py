"""`manage.py whatsapp_status`: the health table, read from the database."""

import io
import json
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from companies.models import Company
from whatsapp.models import (
    ConnectionEvent,
    DesiredState,
    SessionLease,
    SessionState,
    WhatsAppSession,
)

pytestmark = pytest.mark.django_db


def run(*args):
    out = io.StringIO()
    call_command("whatsapp_status", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def sessions(tenants):
    now = timezone.now()
    a = WhatsAppSession.objects.create(
        company=tenants.a,
        desired_state=DesiredState.RUNNING,
        state=SessionState.CONNECTED,
        connected_since=now - timedelta(hours=3),
        reconnect_count=7,
        conflict_count=1,
    )
    SessionLease.objects.create(
        session=a, owner="host.123.abcd", epoch=3, expires_at=now + timedelta(seconds=10)
    )
    for ago in (timedelta(minutes=5), timedelta(minutes=50), timedelta(hours=5), timedelta(days=2)):
        ConnectionEvent.objects.create(session=a, kind="reconnected", created_at=now - ago)
    ConnectionEvent.objects.create(session=a, kind="disconnected", created_at=now)

    b = WhatsAppSession.objects.create(
        company=tenants.b,
        desired_state=DesiredState.RUNNING,
        state=SessionState.FAILED,
        disconnected_since=now - timedelta(minutes=25),
        connect_failure_count=4,
        last_error="failed to dial whatsapp web websocket:\n lookup web.whatsapp.com",
    )
    SessionLease.objects.create(
        session=b, owner="gone.1.ffff", epoch=1, expires_at=now - timedelta(minutes=1)
    )
    idle = Company.objects.create(name="Clinic Gamma", slug="gamma")
    WhatsAppSession.objects.create(company=idle)
    return a, b


def test_it_prints_one_row_per_company_with_the_health_columns(sessions):
    lines = run().splitlines()
    header, rows = lines[0], lines[1:]
    for column in (
        "COMPANY",
        "STATE",
        "CONNECTED SINCE / DOWN FOR",
        "RECONNECTS 1H/24H/TOTAL",
        "CONFLICTS",
        "FAILURES",
        "LAST ERROR",
        "OWNER WORKER",
    ):
        assert column in header
    assert [r.split("  ")[0] for r in rows] == ["Barber Beta", "Clinic Gamma", "Salon Alpha"]
    alpha = next(r for r in rows if r.startswith("Salon Alpha"))
    assert "connected" in alpha and "since " in alpha
    assert " 2/3/7 " in alpha
    assert "host.123.abcd" in alpha
    beta = next(r for r in rows if r.startswith("Barber Beta"))
    assert "failed" in beta and "down 25m" in beta
    assert "failed to dial whatsapp web websocket: lookup" in beta  # one line
    assert "gone.1.ffff" not in beta  # an expired lease owns nothing
    gamma = next(r for r in rows if r.startswith("Clinic Gamma"))
    assert "stopped (idle)" in gamma


def test_json_output_carries_the_same_facts(sessions):
    rows = {row["company_slug"]: row for row in json.loads(run("--json"))}
    assert set(rows) == {"alpha", "beta", "gamma"}
    alpha, beta = rows["alpha"], rows["beta"]
    assert (alpha["reconnects_1h"], alpha["reconnects_24h"], alpha["reconnects_total"]) == (2, 3, 7)
    assert alpha["conflicts"] == 1 and alpha["owner"] == "host.123.abcd"
    assert alpha["health"] == "ok" and alpha["down_for_seconds"] == 0
    assert alpha["connected_since"] == sessions[0].connected_since.isoformat()
    assert beta["state"] == "failed" and beta["failures"] == 4
    assert 25 * 60 - 5 <= beta["down_for_seconds"] <= 25 * 60 + 60
    assert beta["owner"] == "" and beta["health"] == "error"
    assert beta["last_error"].startswith("failed to dial")


def test_it_filters_one_company_by_slug_or_name(sessions):
    assert [r["company"] for r in json.loads(run("--json", "--company", "beta"))] == ["Barber Beta"]
    assert "Salon Alpha" in run("--company", "Salon Alpha")
    with pytest.raises(CommandError, match="no session for company 'nope'"):
        run("--company", "nope")


def test_without_sessions_it_says_so(db):
    assert run().strip() == "no WhatsApp sessions"
    assert json.loads(run("--json")) == []
