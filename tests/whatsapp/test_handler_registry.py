"""Inbound handlers come from a registry in the settings; a company stores a name.
Nothing stored on a company is ever imported, and a registry entry that does not
import fails the system checks at start."""

import sys
from importlib import import_module

import pytest
from django.apps import apps
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.urls import reverse

from companies.models import Company
from whatsapp.checks import check_inbound_handlers
from whatsapp.models import ProcessingJob
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.processing import run_processing_job
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

pytestmark = pytest.mark.django_db
CANARY = "tests.whatsapp.handler_canary"
migration = import_module("companies.migrations.0003_inbound_handler_by_name")


def job_for(company, message_id="WAMID-REG-1", text="hello"):
    event = message_event(message_id, "4915112345678@s.whatsapp.net", text, push_name="Ana")
    outcome = record_inbound_message(company.pk, normalize_message(event))
    return ProcessingJob.objects.get(message_id=outcome.message_pk)


class TestLookup:
    @pytest.mark.parametrize(
        "stored", [f"{CANARY}.handle", "whatsapp.handlers.no_reply", "os.system", "gone"]
    )
    def test_a_company_whose_stored_name_is_not_registered_gets_a_clear_error_and_nothing_is_imported(  # noqa: E501
        self, tenants, stored
    ):
        assert CANARY not in sys.modules
        Company.objects.filter(pk=tenants.a.pk).update(inbound_handler=stored)
        job = job_for(tenants.a)

        assert run_processing_job(job.pk) == ProcessingJob.Status.FAILED
        job.refresh_from_db()
        assert f"inbound handler {stored!r} is not registered" in job.error
        assert "auto_reply, keyword_turns, none, webhook, webhook_turns" in job.error  # noqa: E501  (what may be picked instead)
        assert job.handler == stored
        assert (job.attempts, job.finished_at is not None) == (1, True)  # permanent
        assert CANARY not in sys.modules  # never imported, let alone called

    def test_a_registered_name_runs_its_handler_and_blank_runs_the_default(self, tenants):
        Company.objects.filter(pk=tenants.a.pk).update(inbound_handler="none")
        named = job_for(tenants.a, "WAMID-REG-1")
        default = job_for(tenants.b, "WAMID-REG-2")

        assert run_processing_job(named.pk) == ProcessingJob.Status.SUCCEEDED
        assert run_processing_job(default.pk) == ProcessingJob.Status.SUCCEEDED
        named.refresh_from_db()
        default.refresh_from_db()
        assert (named.handler, named.result) == ("none", "no-reply handler")
        assert (default.handler, default.result) == ("auto_reply", "no rule matched")

    def test_a_registry_entry_added_in_the_settings_is_used_by_name(self, tenants, settings):
        settings.WHATSAPP_INBOUND_HANDLERS = {
            **settings.WHATSAPP_INBOUND_HANDLERS,
            "canary": {"path": f"{CANARY}.handle", "label": "Canary"},
        }
        Company.objects.filter(pk=tenants.a.pk).update(inbound_handler="canary")
        job = job_for(tenants.a)
        assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
        from tests.whatsapp.handler_canary import CALLS

        assert CALLS == [job.message_id]


class TestCompanyField:
    def test_only_registered_names_are_valid_choices(self, tenants):
        company = tenants.a
        for name in ("", "auto_reply", "webhook", "none"):
            company.inbound_handler = name
            company.full_clean()
        company.inbound_handler = "whatsapp.handlers.auto_reply"
        with pytest.raises(ValidationError) as caught:
            company.full_clean()
        assert "inbound_handler" in caught.value.message_dict

    def test_the_company_admin_page_offers_the_registry_by_label(self, client, tenants):
        client.force_login(tenants.superuser)
        page = client.get(
            reverse("admin:companies_company_change", args=[tenants.a.pk]), secure=True
        )
        html = page.content.decode()
        assert page.status_code == 200
        assert '<option value="webhook">' in html
        assert "Keyword auto-replies" in html

    def test_the_migration_turns_dotted_paths_into_names_and_unknown_ones_into_the_default(
        self, tenants
    ):
        extra = Company.objects.create(name="Gamma", slug="gamma")
        stored = {
            tenants.a.pk: "whatsapp.handlers.webhook_reply",
            tenants.b.pk: "myapp.handlers.gone",
            extra.pk: "none",  # already a name
        }
        for pk, value in stored.items():
            Company.objects.filter(pk=pk).update(inbound_handler=value)

        migration.paths_to_names(apps, None)
        names = dict(Company.objects.values_list("pk", "inbound_handler"))
        assert names == {tenants.a.pk: "webhook", tenants.b.pk: "", extra.pk: "none"}

        migration.names_to_paths(apps, None)
        paths = dict(Company.objects.values_list("pk", "inbound_handler"))
        assert paths == {
            tenants.a.pk: "whatsapp.handlers.webhook_reply",
            tenants.b.pk: "",
            extra.pk: "whatsapp.handlers.no_reply",
        }


class TestSystemCheck:
    def test_the_shipped_registry_passes(self):
        assert check_inbound_handlers() == []

    @pytest.mark.parametrize(
        "entry,error_id",
        [
            ({"path": "whatsapp.handlers.no_such_handler", "label": "x"}, "whatsapp.E005"),
            ({"path": "nomodule_at_all.handle", "label": "x"}, "whatsapp.E005"),
            ({"path": "whatsapp.handlers.HandlerResult.__doc__", "label": "x"}, "whatsapp.E005"),
            ("whatsapp.handlers.auto_reply", "whatsapp.E008"),  # a bare path, no label
        ],
    )
    def test_a_registry_entry_that_does_not_import_fails_the_checks_at_start(
        self, settings, entry, error_id
    ):
        settings.WHATSAPP_INBOUND_HANDLERS = {
            **settings.WHATSAPP_INBOUND_HANDLERS,
            "broken": entry,
        }
        assert [e.id for e in check_inbound_handlers()] == [error_id]
        with pytest.raises(SystemCheckError, match="broken"):
            call_command("check")

    def test_a_default_that_is_not_a_registered_name_fails_the_checks(self, settings):
        settings.WHATSAPP = {**settings.WHATSAPP, "INBOUND_HANDLER": "whatsapp.handlers.auto_reply"}
        (error,) = check_inbound_handlers()
        assert error.id == "whatsapp.E009"
        assert "not a name of WHATSAPP_INBOUND_HANDLERS" in error.msg


@pytest.mark.e2e
def test_a_process_refuses_to_start_with_a_registered_handler_that_does_not_import(tmp_path):
    """A real `manage.py` process (qcluster and runworker run the same checks first)."""
    from tests.aiadmin.test_settings_deploy import manage

    broken = '{"ai": {"path": "myapp.handlers.ai_reply", "label": "AI answers"}}'
    result = manage(tmp_path, "check", DJANGO_DEBUG="1", WHATSAPP_EXTRA_INBOUND_HANDLERS=broken)
    assert result.returncode != 0
    assert "whatsapp.E005" in result.stderr
    assert "WHATSAPP_INBOUND_HANDLERS['ai'] 'myapp.handlers.ai_reply' cannot be imported" in (
        result.stderr
    )
    fine = '{"ai": {"path": "whatsapp.handlers.no_reply", "label": "AI answers"}}'
    assert manage(
        tmp_path, "check", DJANGO_DEBUG="1", WHATSAPP_EXTRA_INBOUND_HANDLERS=fine
    ).returncode == 0
