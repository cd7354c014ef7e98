"""django-q2 entry points. They take primitive ids and call one service."""

from whatsapp.services.jobs import sweep_unqueued_jobs
from whatsapp.services.processing import run_processing_job


def process_inbound_message(job_id):
    return run_processing_job(int(job_id))


def sweep_jobs():
    return sweep_unqueued_jobs()
