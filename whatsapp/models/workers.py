"""Worker processes (`manage.py runworker whatsapp`) and their heartbeats."""

from django.db import models
from django.utils import timezone


class WorkerProcess(models.Model):
    """One runworker process. Its channel is where commands for its sessions go."""

    worker_id = models.CharField(max_length=64, unique=True)
    channel_name = models.CharField(max_length=128)
    hostname = models.CharField(max_length=200, blank=True)
    pid = models.PositiveIntegerField(default=0)
    # Which machine and which process exactly (whatsapp.services.local_processes):
    # a worker on the same machine frees the leases of a worker whose process is
    # gone at once, instead of waiting for them to expire. Empty off Linux.
    host_key = models.CharField(max_length=80, blank=True)
    process_start = models.PositiveBigIntegerField(default=0)
    started_at = models.DateTimeField(default=timezone.now)
    heartbeat_at = models.DateTimeField(default=timezone.now, db_index=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    sessions_owned = models.PositiveIntegerField(default=0)
    # Worst lateness of the worker's event loop (ms) since its previous heartbeat:
    # a loop late by seconds delays lease renewal (and so fences the worker).
    loop_lag_ms = models.FloatField(null=True, blank=True)
    stop_reason = models.CharField(max_length=300, blank=True)
    # Set when another worker found this one's process gone (it did not stop itself).
    died_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-heartbeat_at"]
        verbose_name_plural = "worker processes"

    def __str__(self):
        return f"{self.worker_id} ({self.hostname}:{self.pid})"
