"""Bad input in the admin is a 4xx, never a server error: object ids that no
row can have in the URL, and NUL characters (which PostgreSQL text cannot
hold) in a URL, a list filter, an autocomplete term or an action's selection.
The NUL cases fail only on PostgreSQL; SQLite stores NUL."""

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from companies.models import CompanyAPIKey

from .conftest import login

pytestmark = pytest.mark.django_db


@pytest.fixture
def owner(client, tenants, sessions):
    tenants.owner.user_permissions.set(Permission.objects.all())
    CompanyAPIKey.objects.create_key(name="a key", company=tenants.a)
    return login(client, tenants.owner)


@pytest.mark.parametrize("object_id", ["abc", "1.5", "1 OR 1", "99999999999999999999999"])
def test_a_session_page_whose_id_is_not_a_number_is_not_found(owner, object_id):
    url = reverse("admin:whatsapp_whatsappsession_changelist") + f"{object_id}/change/"
    assert owner.get(url).status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "/admin/companies/companyapikey/%00/change/",
        "/admin/companies/companyapikey/%00/history/",
        "/admin/whatsapp/whatsappsession/%00/change/",
        "/admin/whatsapp/inboundmessage/?kind__exact=%00",
        "/admin/whatsapp/whatsappsession/?state__exact=%00",
        "/admin/autocomplete/?app_label=companies&model_name=membership&field_name=user&term=%00",
    ],
)
def test_a_nul_character_in_an_admin_url_is_a_bad_request(owner, url):
    assert owner.get(url).status_code == 400


def test_a_nul_character_in_an_admin_form_is_a_bad_request(owner):
    answer = owner.post(
        reverse("admin:companies_companyapikey_changelist"),
        {"action": "revoke_keys", "_selected_action": ["a\x00"], "index": "0"},
    )
    assert answer.status_code == 400
    assert not CompanyAPIKey.objects.filter(revoked=True).exists()


def test_a_nul_character_in_an_api_query_is_a_bad_request_in_the_error_shape(owner, tenants):
    answer = owner.get(f"/api/v1/whatsapp/sessions/{tenants.a.pk}/outbound/?status=%00")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "invalid"
