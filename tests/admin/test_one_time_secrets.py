"""A secret shown once in the admin (a new API key) is kept server-side until it is
shown: messages live in the session, never in a (signed but readable) cookie."""

import re

import pytest

from companies.models import CompanyAPIKey

pytestmark = pytest.mark.django_db

ADD = "/admin/companies/companyapikey/add/"


def cookies_of(response):
    return {name: morsel.value for name, morsel in response.cookies.items()}


def test_a_new_api_key_is_shown_once_and_never_sent_in_a_cookie(client, tenants):
    client.force_login(tenants.superuser)
    saved = client.post(ADD, {"name": "ci", "company": tenants.a.pk}, secure=True)
    assert saved.status_code == 302
    shown = client.get(saved["Location"], secure=True)
    key = CompanyAPIKey.objects.get(name="ci")
    match = re.search(rf"{key.prefix}\.[A-Za-z0-9]+", shown.content.decode())
    assert match, "the new key is shown on the page after saving"
    raw = match.group()
    assert key.is_valid(raw)

    for response in (saved, shown):
        cookies = cookies_of(response)
        assert "messages" not in cookies
        for value in cookies.values():
            assert raw not in value and key.prefix not in value
    # And once is once: the next page does not show it again.
    again = client.get(saved["Location"], secure=True)
    assert raw not in again.content.decode()
