"""`manage.py demo_company`: a demo company with auto-reply rules, its session started.

Idempotent. With the simulator transport and a simulator started with
`--auto-pair`, the worker pairs it on its own (see `make demo`)."""

from django.core.management.base import BaseCommand
from django.db import transaction

from companies.models import Company
from whatsapp.models import AutoReplyRule
from whatsapp.services.control import start_session

RULES = [
    # (match, keyword, reply, priority)
    ("contains", "hours", "Hi {name}! We are open Monday to Friday, 9:00-18:00.", 10),
    ("contains", "price", "Hi {name}, a haircut is 30 EUR, colouring from 55 EUR.", 20),
    ("contains", "book", "Thanks {name}! Reply with a day and time and we will confirm.", 30),
    ("any", "", "Thanks {name}, we got your message and answer soon. (Try: hours, price)", 100),
]


class Command(BaseCommand):
    help = "Create (or keep) the demo company with auto-reply rules and start its session."

    def add_arguments(self, parser):
        parser.add_argument("--name", default="Demo Salon")
        parser.add_argument("--slug", default="demo-salon")

    def handle(self, *args, **opts):
        with transaction.atomic():
            company, created = Company.objects.get_or_create(
                slug=opts["slug"], defaults={"name": opts["name"]}
            )
            if not company.auto_reply_rules.exists():
                for match, keyword, reply, priority in RULES:
                    AutoReplyRule.objects.create(
                        company=company,
                        match=match,
                        keyword=keyword,
                        reply_text=reply,
                        priority=priority,
                    )
        start_session(company.pk, actor="demo")
        self.stdout.write(
            f"{'created' if created else 'kept'} company {company.pk} {company.name!r} with "
            f"{company.auto_reply_rules.count()} auto-reply rules; session started"
        )
