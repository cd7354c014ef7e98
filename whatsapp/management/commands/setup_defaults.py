"""Create the recurring jobs the application relies on (idempotent)."""

from django.conf import settings
from django.core.management.base import BaseCommand
from django_q.models import Schedule

# All on the maintenance cluster (its own queue, `manage.py runcluster`):
# never behind a backlog of client messages.
SCHEDULES = [
    # (name, func, minutes)
    ("whatsapp: sweep unqueued jobs", "whatsapp.tasks.sweep_jobs", 1),
    ("whatsapp: dispatch due webhook deliveries", "whatsapp.tasks.dispatch_webhooks", 1),
    ("whatsapp: check connection alerts", "whatsapp.tasks.check_alerts", 1),
    ("whatsapp: delete media past retention", "whatsapp.tasks.delete_expired_media", 60),
    # Companies' message retention (docs/conversations.md): texts past N days.
    ("whatsapp: delete expired message texts", "whatsapp.tasks.delete_expired_messages", 60),
]


class Command(BaseCommand):
    help = "Create the recurring django-q2 schedules (job sweeper, ...)."

    def handle(self, *args, **options):
        for name, func, minutes in SCHEDULES:
            _, created = Schedule.objects.update_or_create(
                name=name,
                defaults={
                    "func": func,
                    "schedule_type": Schedule.MINUTES,
                    "minutes": minutes,
                    "repeats": -1,
                    "cluster": settings.Q_MAINTENANCE_CLUSTER,
                },
            )
            self.stdout.write(f"{'created' if created else 'kept'} schedule: {name}")
