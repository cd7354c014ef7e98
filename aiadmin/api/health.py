"""GET /api/v1/health: for load balancers. Unauthenticated, so it says nothing
about any tenant: only whether the shared parts work, and two counts.

* database, channel layer, job queue: each must answer, else 503.
* live workers (WorkerProcess heartbeats within the lease TTL): none is
  "degraded" (200): the web keeps serving, and session commands wait in the
  database until a worker starts.

Failures are logged with their cause; the response only says which check failed.
"""

import asyncio
import logging
import uuid
from datetime import timedelta

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.utils import timezone
from django_q.brokers import get_broker
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from whatsapp.models import WorkerProcess

logger = logging.getLogger(__name__)
CHANNEL_TIMEOUT = 3.0


def check_database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return {}


def check_channel_layer():
    """A round trip through the layer on a throwaway channel."""
    layer = get_channel_layer()
    channel = f"health.check.{uuid.uuid4().hex}"
    token = uuid.uuid4().hex

    async def round_trip():
        await layer.send(channel, {"type": "health.check", "token": token})
        return await asyncio.wait_for(layer.receive(channel), CHANNEL_TIMEOUT)

    message = async_to_sync(round_trip)()
    if message.get("token") != token:
        raise RuntimeError("channel layer returned another message")
    return {}


def check_job_queue():
    return {"depth": int(get_broker().queue_size() or 0)}


def check_workers(now=None):
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.WHATSAPP["LEASE_TTL"])
    live = WorkerProcess.objects.filter(stopped_at__isnull=True, heartbeat_at__gte=cutoff).count()
    return {"live": live}


REQUIRED = {
    "database": check_database,
    "channel_layer": check_channel_layer,
    "job_queue": check_job_queue,
}


def collect_health():
    """(overall status, checks) where status is ok, degraded or unhealthy."""
    checks = {}
    for name, check in REQUIRED.items():
        try:
            checks[name] = {"ok": True, **check()}
        except Exception:
            logger.exception("health check %s failed", name)
            checks[name] = {"ok": False}
    if not all(c["ok"] for c in checks.values()):
        # Worker heartbeats live in the database; without it they are unknown.
        checks["workers"] = {"ok": False}
        return "unhealthy", checks
    try:
        workers = check_workers()
        checks["workers"] = {"ok": workers["live"] > 0, **workers}
    except Exception:
        logger.exception("health check workers failed")
        checks["workers"] = {"ok": False}
    return ("ok" if checks["workers"]["ok"] else "degraded"), checks


_check = inline_serializer(
    "HealthCheck",
    {
        "ok": serializers.BooleanField(),
        "depth": serializers.IntegerField(required=False),
        "live": serializers.IntegerField(required=False),
    },
)
HealthSerializer = inline_serializer(
    "Health",
    {
        "status": serializers.ChoiceField(choices=["ok", "degraded", "unhealthy"]),
        "checks": serializers.DictField(child=_check),
    },
)


class HealthView(APIView):
    authentication_classes = []  # a stray key must not turn a health check into a 401
    permission_classes = [AllowAny]
    throttle_classes = []

    @extend_schema(
        summary="Health for load balancers (no authentication)",
        tags=["health"],
        auth=[],
        responses={200: HealthSerializer, 503: HealthSerializer},
    )
    def get(self, request):
        overall, checks = collect_health()
        code = 503 if overall == "unhealthy" else 200
        response = Response({"status": overall, "checks": checks}, status=code)
        response["Cache-Control"] = "no-store"
        return response
