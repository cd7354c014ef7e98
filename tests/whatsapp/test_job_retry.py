"""An operator retries a failed processing job (admin action and API): one
more attempt that knows it is a retry; only failed jobs; only the companies the
operator manages."""

import pytest
from django.contrib.auth.models import Permission

from companies.models import CompanyAPIKey
from tests.admin.conftest import login
from tests.api.conftest import key_client
from tests.whatsapp.job_queue import purge
from whatsapp.models import ProcessingJob, WhatsAppSession
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.jobs import retry_processing_job
from whatsapp.services.processing import run_processing_job
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

pytestmark = pytest.mark.django_db(databases="__all__")

seen = []  # (attempt number, previous outcome) per call of the handler below


def flaky_handler(message, attempt):
    seen.append((attempt.number, attempt.previous_outcome))
    if attempt.number == 1:
        raise RuntimeError("the booking system was down")
    return None


@pytest.fixture(autouse=True)
def handlers(settings):
    settings.WHATSAPP_INBOUND_HANDLERS = {
        **settings.WHATSAPP_INBOUND_HANDLERS,
        "flaky": {"path": "tests.whatsapp.test_job_retry.flaky_handler", "label": "flaky"},
    }
    settings.WHATSAPP = {**settings.WHATSAPP, "JOB_MAX_ATTEMPTS": 1}  # a failure is final
    seen.clear()
    purge()
    yield
    purge()


def failed_job(company, wa_id):
    company.inbound_handler = "flaky"
    company.save(update_fields=["inbound_handler"])
    WhatsAppSession.objects.get_or_create(company=company)
    msg = normalize_message(message_event(wa_id, "491701234567@s.whatsapp.net", "book me"))
    record_inbound_message(company.pk, msg)
    purge()
    job = ProcessingJob.objects.get(message__wa_message_id=wa_id)
    assert run_processing_job(job.pk) == ProcessingJob.Status.FAILED
    job.refresh_from_db()
    return job


@pytest.fixture
def keys(tenants):
    _, a = CompanyAPIKey.objects.create_key(company=tenants.a, name="a")
    _, b = CompanyAPIKey.objects.create_key(company=tenants.b, name="b")
    return {"a": a, "b": b}


def state(job):
    job.refresh_from_db()
    return job.status, job.attempts


def test_a_retried_job_runs_once_more_and_the_handler_knows_it_is_a_retry(tenants):
    job = failed_job(tenants.a, "3EB0RETRY1")

    assert retry_processing_job(job.pk) is True
    purge()
    assert run_processing_job(job.pk) == ProcessingJob.Status.SUCCEEDED
    assert seen == [(1, ""), (2, ProcessingJob.Outcome.FAILED)]
    assert state(job) == (ProcessingJob.Status.SUCCEEDED, 2)


def test_only_a_failed_job_can_be_retried(tenants):
    job = failed_job(tenants.a, "3EB0RETRY2")
    assert retry_processing_job(job.pk) is True
    assert retry_processing_job(job.pk) is False  # pending or queued now: left alone
    purge()
    run_processing_job(job.pk)
    assert retry_processing_job(job.pk) is False  # succeeded
    assert state(job) == (ProcessingJob.Status.SUCCEEDED, 2)


def retry_url(company, job):
    return (
        f"/api/v1/whatsapp/sessions/{company.pk}/inbound/{job.message_id}/processing/retry"
    )


def test_the_api_retries_a_failed_job_of_the_key_s_company(tenants, keys):
    job = failed_job(tenants.a, "3EB0RETRY3")
    client = key_client(keys["a"])

    response = client.post(retry_url(tenants.a, job))
    assert response.status_code == 202, response.content
    assert response.json()["status"] in ("pending", "queued")

    again = client.post(retry_url(tenants.a, job))
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_not_failed"


def test_another_company_s_key_cannot_retry_and_changes_nothing(tenants, keys):
    job = failed_job(tenants.a, "3EB0RETRY4")
    before = state(job)

    # B's key, on A's path and on its own path with A's message id: both 404.
    other = key_client(keys["b"])
    assert other.post(retry_url(tenants.a, job)).status_code == 404
    assert other.post(retry_url(tenants.b, job)).status_code == 404
    assert state(job) == before


def test_a_plain_member_may_read_a_job_but_not_retry_it(tenants, client):
    job = failed_job(tenants.a, "3EB0RETRY5")
    login(client, tenants.member)
    response = client.post(retry_url(tenants.a, job), content_type="application/json")
    assert response.status_code == 403
    assert state(job) == (ProcessingJob.Status.FAILED, 1)


def test_the_admin_action_retries_only_failed_jobs_of_companies_the_user_manages(
    tenants, client
):
    mine = failed_job(tenants.a, "3EB0RETRY6")
    theirs = failed_job(tenants.b, "3EB0RETRY7")
    owner = tenants.owner
    owner.user_permissions.add(Permission.objects.get(codename="view_processingjob"))
    login(client, owner)

    response = client.post(
        "/admin/whatsapp/processingjob/",
        {"action": "retry_failed_jobs", "_selected_action": [mine.pk, theirs.pk]},
        follow=True,
    )

    assert response.status_code == 200
    assert state(mine)[0] in (ProcessingJob.Status.PENDING, ProcessingJob.Status.QUEUED)
    assert state(theirs) == (ProcessingJob.Status.FAILED, 1)  # B's job: untouched


def test_a_plain_member_is_not_offered_the_retry_action(tenants, client):
    failed_job(tenants.a, "3EB0RETRY8")
    member = tenants.member
    member.user_permissions.add(Permission.objects.get(codename="view_processingjob"))
    login(client, member)

    response = client.get("/admin/whatsapp/processingjob/")
    assert response.status_code == 200
    assert b"retry_failed_jobs" not in response.content
