"""Worker processes (`manage.py runworker whatsapp`) and their heartbeats."""

from dataclasses import dataclass

from django.db import models
from django.utils import timezone
from django.utils.timesince import timesince


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


@dataclass(frozen=True)
class WorkerWords:
    text: str  # "worker on vm (process 30719), running for 3 hours"
    details: str  # the raw worker id and what else a developer needs


def describe_worker(worker_id, process=None, now=None):
    """A worker as a person reads it: its machine and process and how long it
    has run, from its WorkerProcess row when known (else from the id, which is
    `<host>.<pid>.<random>`: services.leases.new_worker_id). The raw id goes to
    the details."""
    if not worker_id:
        return WorkerWords("no worker", "")
    now = now or timezone.now()
    host, pid = (process.hostname, process.pid) if process is not None else ("", 0)
    parts = worker_id.split(".")
    if not host and len(parts) >= 3:
        host = parts[0]
    if not pid and len(parts) >= 3 and parts[1].isdigit():
        pid = int(parts[1])
    text = f"worker on {host or 'an unknown machine'}"
    if pid:
        text += f" (process {pid})"
    if process is not None:
        if process.stopped_at or process.died_at:
            text += ", stopped " + timesince(process.stopped_at or process.died_at, now) + " ago"
        else:
            text += ", running for " + timesince(process.started_at, now)
    return WorkerWords(text, f"worker id {worker_id}")
