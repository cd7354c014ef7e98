"""Re-encrypt every stored model API key with the newest ASSISTANT_ENCRYPTION_KEYS
key (MultiFernet.rotate), so older keys can then be removed from the setting."""

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from assistant.models import AssistantConfig
from assistant.secret_box import SecretError, rotate


class Command(BaseCommand):
    help = "Re-encrypt the companies' model API keys with the first ASSISTANT_ENCRYPTION_KEYS key."

    def handle(self, *args, **options):
        done = 0
        with transaction.atomic():
            for config in AssistantConfig.objects.select_for_update().exclude(api_key_encrypted=""):
                try:
                    token = rotate(config.api_key_encrypted)
                except SecretError as exc:
                    raise CommandError(f"company {config.company_id}: {exc}") from None
                AssistantConfig.objects.filter(pk=config.pk).update(api_key_encrypted=token)
                done += 1
        self.stdout.write(f"re-encrypted {done} API key(s) with the newest key")
