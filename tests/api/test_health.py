"""GET /api/v1/health: database, channel layer, job queue depth and live
workers, unauthenticated, with nothing tenant-specific in it; 503 when a
required part is down."""

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import override_settings
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.tasks import async_task

from whatsapp.models import WorkerProcess

pytestmark = pytest.mark.django_db(databases="__all__")
HEALTH = "/api/v1/health"


def live_worker(**fields):
    return WorkerProcess.objects.create(
        worker_id=fields.pop("worker_id", "w-secret-1"),
        channel_name="whatsapp.worker.w-secret-1",
        hostname="secret-host.internal",
        pid=4242,
        **fields,
    )


def test_all_parts_up_and_a_live_worker_is_ok(client):
    live_worker()
    response = client.get(HEALTH)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["channel_layer"] == {"ok": True}
    assert body["checks"]["job_queue"]["ok"] is True
    assert isinstance(body["checks"]["job_queue"]["depth"], int)
    assert body["checks"]["workers"] == {"ok": True, "live": 1}
    assert response["Cache-Control"] == "no-store"


def test_no_live_worker_is_degraded_but_still_200(client):
    live_worker(worker_id="stale", heartbeat_at=timezone.now() - timedelta(minutes=5))
    live_worker(worker_id="stopped", stopped_at=timezone.now())
    response = client.get(HEALTH)
    assert response.status_code == 200
    assert response.json()["status"] == "degraded"
    assert response.json()["checks"]["workers"] == {"ok": False, "live": 0}


def test_the_queue_depth_counts_waiting_jobs(client):
    broker = get_broker()
    before = client.get(HEALTH).json()["checks"]["job_queue"]["depth"]
    try:
        async_task("math.floor", 1.5)
        async_task("math.floor", 2.5)
        after = client.get(HEALTH).json()["checks"]["job_queue"]["depth"]
    finally:
        if settings.Q_BROKER == "redis":
            broker.purge_queue()
    assert after == before + 2


def test_a_dead_channel_layer_is_a_503_that_names_only_the_check(client, caplog):
    dead = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://127.0.0.1:1/0"}]},
        }
    }
    with override_settings(CHANNEL_LAYERS=dead):
        response = client.get(HEALTH)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["channel_layer"] == {"ok": False}
    assert body["checks"]["database"] == {"ok": True}
    assert "127.0.0.1" not in response.content.decode()
    assert "health check channel_layer failed" in caplog.text


def test_it_needs_no_credentials_and_ignores_a_bad_key(client):
    assert client.get(HEALTH).status_code in (200, 503)
    response = client.get(HEALTH, HTTP_AUTHORIZATION="Api-Key not.valid")
    assert response.status_code != 401


def test_it_reveals_nothing_tenant_or_host_specific(client, tenants, data):
    live_worker()
    text = client.get(HEALTH).content.decode()
    for secret in [
        "Salon Alpha",
        "Barber Beta",
        "alpha",
        "beta",
        "w-secret-1",
        "secret-host",
        "4242",
        str(tenants.a.pk) + ",",
    ]:
        assert secret not in text
