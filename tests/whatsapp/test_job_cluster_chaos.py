"""The job stage under kills (real processes, both passes).

Messages are stored while `manage.py runcluster` runs them; the cluster's main
process is SIGKILLed while a job runs (its whole tree dies with it), a new
cluster starts, and later one cluster worker is SIGKILLed in the middle of a
job. Checked from the database and from every handler call:

* every message stored once, with one job, every job succeeded: none stranded
  (on the Redis broker the killed cluster had popped tasks that were on no
  list any more);
* no attempt number is run twice, and every handler call after a first
  attempt was told how the previous attempt ended (a retry that knows);
* one reply per message.
"""

import json
import signal
from collections import defaultdict

import psutil
import pytest

from tests.e2e_processes import AppProcesses, wait_for
from tests.whatsapp.job_queue import purge
from whatsapp.models import InboundMessage, OutboundMessage, ProcessingJob, WhatsAppSession
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.processing import claimant_identity
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True, databases="__all__")]

HANDLER = "chaos_record"
HANDLER_REGISTRY = {HANDLER: {"path": "tests.whatsapp.chaos_handler.record", "label": "chaos"}}


@pytest.fixture(autouse=True)
def empty_queue():
    purge()
    yield
    purge()


def send(company, first, count):
    for i in range(first, first + count):
        msg = normalize_message(
            message_event(f"3EB0CH{i:04d}", f"4917012{i:05d}@s.whatsapp.net", f"m{i}")
        )
        assert record_inbound_message(company.pk, msg).created


def running_job():
    return ProcessingJob.objects.filter(status=ProcessingJob.Status.RUNNING).first()


def test_killing_the_cluster_or_a_worker_mid_job_strands_nothing_and_retries_knowingly(
    tenants, tmp_path, settings
):
    settings.WHATSAPP_INBOUND_HANDLERS = {**settings.WHATSAPP_INBOUND_HANDLERS, **HANDLER_REGISTRY}
    company = tenants.a
    company.inbound_handler = HANDLER
    company.save(update_fields=["inbound_handler"])
    WhatsAppSession.objects.create(company=company)
    calls = tmp_path / "calls.txt"
    app = AppProcesses(
        tmp_path,
        AIADMIN_CHAOS_CALLS=calls,
        WHATSAPP_EXTRA_INBOUND_HANDLERS=json.dumps(HANDLER_REGISTRY),
        WHATSAPP_LOST_TASK_AFTER=5,
        Q_WORKERS=2,
    )
    total = 0
    try:
        # 1. SIGKILL of the cluster's main process while a job runs.
        cluster = app.start_qcluster()
        send(company, total, 30)
        total += 30
        wait_for(running_job, 120, "a job to run")
        tree = psutil.Process(cluster.pid).children(recursive=True)
        cluster.send_signal(signal.SIGKILL)
        cluster.wait(timeout=10)
        wait_for(
            lambda: not [p for p in tree if p.is_running() and p.status() != "zombie"],
            30,
            "the killed cluster's children to exit",
        )
        # 2. A new cluster; more messages; SIGKILL of the worker running a job.
        app.start_qcluster()
        send(company, total, 30)
        total += 30
        job = wait_for(running_job, 120, "a job to run in the new cluster")
        worker = claimant_identity(job.claimed_by).pid
        if psutil.pid_exists(worker):
            psutil.Process(worker).kill()
        send(company, total, 10)
        total += 10
        wait_for(
            lambda: (
                ProcessingJob.objects.filter(status=ProcessingJob.Status.SUCCEEDED).count() == total
            ),
            300,
            f"all {total} jobs to succeed",
        )
    except AssertionError as exc:
        states = list(
            ProcessingJob.objects.exclude(status="succeeded").values_list(
                "message__wa_message_id", "status", "attempts", "enqueue_count"
            )
        )
        raise AssertionError(f"{exc}\nunfinished: {states}\n{app.logs()}") from None
    finally:
        app.stop("qcluster")

    assert InboundMessage.objects.count() == ProcessingJob.objects.count() == total
    runs = defaultdict(list)
    for line in calls.read_text().splitlines():
        wa_id, number, previous = line.split()
        runs[wa_id].append((int(number), previous))
    assert len(runs) == total
    jobs = dict(ProcessingJob.objects.values_list("message__wa_message_id", "attempts"))
    for wa_id, seen in runs.items():
        numbers = [n for n, _ in seen]
        # Never one attempt twice. (An attempt may also have died after its
        # claim and before the handler began: then its number is missing.)
        assert len(set(numbers)) == len(numbers), (wa_id, seen)
        assert max(numbers) == jobs[wa_id], (wa_id, seen)
        for number, previous in seen:
            assert (number == 1) == (previous == "-"), (wa_id, seen)  # a retry knows
    assert any(attempts > 1 for attempts in jobs.values())  # the kills did land mid-job
    replies = OutboundMessage.objects.values_list("in_reply_to__wa_message_id", flat=True)
    assert sorted(replies) == sorted(runs)
