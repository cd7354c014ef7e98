"""django-q2 entry points. They take primitive ids and call one service."""

from whatsapp.services.alerts import run_alert_checks
from whatsapp.services.conversations import delete_expired_message_bodies
from whatsapp.services.jobs import sweep_unqueued_jobs
from whatsapp.services.media import delete_expired_media as delete_expired_media_files
from whatsapp.services.processing import run_message_job, run_processing_job
from whatsapp.services.webhooks import deliver_webhook as deliver_webhook_service
from whatsapp.services.webhooks import (
    dispatch_due_webhooks,
    forget_expired_webhook_secrets,
    prune_webhook_deliveries,
)


def process_message_job(message_id):
    """Run the processing job of inbound message `message_id`."""
    return run_message_job(int(message_id))


def process_inbound_message(job_id):
    """Run processing job `job_id` (tasks queued by earlier versions)."""
    return run_processing_job(int(job_id))


def sweep_jobs():
    return sweep_unqueued_jobs()


def deliver_webhook(delivery_id):
    return deliver_webhook_service(int(delivery_id))


def dispatch_webhooks():
    pruned = prune_webhook_deliveries()
    forgotten = forget_expired_webhook_secrets()
    return (
        f"enqueued {len(dispatch_due_webhooks())}, forgot {forgotten} old secrets, "
        f"pruned {pruned}"
    )


def check_alerts():
    return run_alert_checks().summary()


def delete_expired_media():
    """Hourly: delete media files past their company's retention (docs/media.md)."""
    return f"deleted {delete_expired_media_files()} media files"


def delete_expired_messages():
    return f"cleared {delete_expired_message_bodies()} message texts past retention"
