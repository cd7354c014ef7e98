"""Authentication: company API keys (hashed, revocable, created in the admin
and shown once) and staff sessions; refusals in the one error shape."""

import re

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient

from companies.models import CompanyAPIKey

from .conftest import key_client

SESSIONS = "/api/v1/whatsapp/sessions/"


def test_keys_are_stored_hashed(tenants, keys):
    stored = CompanyAPIKey.objects.get(name="a main")
    assert keys["a"] not in (stored.id, stored.hashed_key)
    assert keys["a"].startswith(stored.prefix + ".")


def test_a_valid_key_authenticates_as_its_company(keys, tenants):
    response = key_client(keys["a"]).get(SESSIONS)
    assert response.status_code == 200


def test_the_keyword_is_case_insensitive(keys, tenants):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"api-key {keys['a']}")
    assert client.get(SESSIONS).status_code == 200


def test_no_credentials_is_a_401_with_a_challenge(tenants):
    response = APIClient().get(SESSIONS)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"
    assert response.json() == {
        "error": {
            "status": 401,
            "code": "not_authenticated",
            "message": "Authentication credentials were not provided.",
        }
    }


def test_a_wrong_key_is_a_401_even_with_a_known_prefix(keys, tenants):
    prefix = keys["a"].split(".")[0]
    for raw in ("garbage", f"{prefix}.wrong-secret", "nope.nope", "."):
        response = key_client(raw).get(SESSIONS)
        assert response.status_code == 401, raw
        assert response.json()["error"]["message"] == "Invalid API key."


def test_a_revoked_key_is_a_401_that_says_so(keys, tenants):
    response = key_client(keys["a_revoked"]).get(SESSIONS)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]


def test_an_expired_key_is_a_401_that_says_so(keys, tenants):
    response = key_client(keys["a_expired"]).get(SESSIONS)
    assert response.status_code == 401
    assert "expired" in response.json()["error"]["message"]


def test_a_bad_key_is_refused_even_for_a_logged_in_user(keys, tenants):
    client = APIClient()
    client.force_login(tenants.superuser)
    client.credentials(HTTP_AUTHORIZATION="Api-Key bogus.key")
    assert client.get(SESSIONS).status_code == 401


def test_a_logged_in_user_who_is_not_staff_is_refused(tenants):
    tenants.member.is_staff = False
    tenants.member.save()
    client = APIClient()
    client.force_login(tenants.member)
    response = client.get(SESSIONS)
    assert response.status_code == 403
    assert "staff" in response.json()["error"]["message"]


def test_session_writes_need_the_csrf_token(tenants, data):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(tenants.owner)
    response = client.post(f"{SESSIONS}{tenants.a.pk}/stop")
    assert response.status_code == 403
    assert "CSRF" in response.json()["error"]["message"]


def test_a_key_needs_no_csrf_token(keys, tenants, data):
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {keys['a']}")
    assert client.post(f"{SESSIONS}{tenants.a.pk}/stop").status_code == 202


def test_the_admin_creates_a_key_and_shows_it_once(tenants):
    client = Client()
    client.force_login(tenants.superuser)
    response = client.post(
        "/admin/companies/companyapikey/add/",
        {"name": "booking site", "company": tenants.a.pk},
        follow=True,
    )
    assert response.status_code == 200
    shown = [str(m) for m in response.context["messages"]]
    match = re.search(r"The API key for booking site is: (\S+)\.", " ".join(shown))
    assert match, shown
    raw = match.group(1)
    stored = CompanyAPIKey.objects.get(name="booking site")
    assert stored.company == tenants.a
    assert raw not in stored.hashed_key
    assert key_client(raw).get(f"{SESSIONS}{tenants.a.pk}/").status_code == 200
    page = client.get(f"/admin/companies/companyapikey/{stored.pk}/change/")
    assert raw not in page.content.decode()


def test_the_admin_revokes_keys_and_they_stop_working_at_once(tenants, keys):
    client = Client()
    client.force_login(tenants.superuser)
    key = CompanyAPIKey.objects.get(name="a main")
    response = client.post(
        "/admin/companies/companyapikey/",
        {"action": "revoke_keys", "_selected_action": [key.pk]},
        follow=True,
    )
    assert response.status_code == 200
    key.refresh_from_db()
    assert key.revoked
    assert key_client(keys["a"]).get(SESSIONS).status_code == 401
    assert key_client(keys["b"]).get(SESSIONS).status_code == 200


def test_the_library_s_company_less_key_model_is_not_in_the_admin(tenants):
    client = Client()
    client.force_login(tenants.superuser)
    assert client.get("/admin/rest_framework_api_key/apikey/").status_code == 404


@pytest.fixture
def key_manager(tenants):
    """A's owner, given the admin permissions on company API keys."""
    perms = Permission.objects.filter(
        content_type__app_label="companies", codename__endswith="companyapikey"
    )
    tenants.owner.user_permissions.add(*perms)
    client = Client()
    client.force_login(tenants.owner)
    return client


def test_an_owner_in_the_admin_sees_only_their_company_s_keys(key_manager, keys, tenants):
    page = key_manager.get("/admin/companies/companyapikey/").content.decode()
    assert "a main" in page
    assert "b main" not in page
    b_key = CompanyAPIKey.objects.get(name="b main")
    assert key_manager.get(f"/admin/companies/companyapikey/{b_key.pk}/change/").status_code in (
        302,
        404,
    )


def test_an_owner_cannot_create_a_key_for_another_company(key_manager, tenants):
    response = key_manager.post(
        "/admin/companies/companyapikey/add/", {"name": "sneaky", "company": tenants.b.pk}
    )
    assert response.status_code == 200  # the form again, with an error
    assert "Select a valid choice" in response.content.decode()
    assert not CompanyAPIKey.objects.filter(name="sneaky").exists()
    response = key_manager.post(
        "/admin/companies/companyapikey/add/", {"name": "mine", "company": tenants.a.pk}
    )
    assert response.status_code == 302
    assert CompanyAPIKey.objects.get(name="mine").company == tenants.a
