# Company.inbound_handler held a dotted path that the job cluster imported; it now
# holds a name of the handler registry (settings.WHATSAPP_INBOUND_HANDLERS).
# Known paths become their names; an unknown path becomes blank (the default
# handler), since nothing stored on a company is imported any more.

from django.conf import settings
from django.db import migrations, models

import companies.inbound_handlers

BUILTIN = {
    "whatsapp.handlers.auto_reply": "auto_reply",
    "whatsapp.handlers.webhook_reply": "webhook",
    "whatsapp.handlers.no_reply": "none",
}


def _registry():
    return getattr(settings, "WHATSAPP_INBOUND_HANDLERS", {})


def paths_to_names(apps, schema_editor):
    Company = apps.get_model("companies", "Company")
    registry = _registry()
    by_path = {**BUILTIN, **{entry["path"]: name for name, entry in registry.items()}}
    for pk, value in Company.objects.exclude(inbound_handler="").values_list(
        "pk", "inbound_handler"
    ):
        if value in registry:
            continue  # already a name
        name = by_path.get(value, "")
        if name not in registry:
            name = ""
        Company.objects.filter(pk=pk).update(inbound_handler=name)


def names_to_paths(apps, schema_editor):
    Company = apps.get_model("companies", "Company")
    paths = {name: path for path, name in BUILTIN.items()}
    paths.update({name: entry["path"] for name, entry in _registry().items()})
    for pk, value in Company.objects.exclude(inbound_handler="").values_list(
        "pk", "inbound_handler"
    ):
        Company.objects.filter(pk=pk).update(inbound_handler=paths.get(value, ""))


class Migration(migrations.Migration):

    dependencies = [
        ("companies", "0002_company_api_keys"),
    ]

    operations = [
        migrations.RunPython(paths_to_names, names_to_paths),
        migrations.AlterField(
            model_name="company",
            name="inbound_handler",
            field=models.CharField(
                blank=True,
                choices=companies.inbound_handlers.handler_choices,
                help_text="How inbound messages are answered. Empty: the default handler "
                "(setting WHATSAPP_INBOUND_HANDLER).",
                max_length=64,
            ),
        ),
    ]
