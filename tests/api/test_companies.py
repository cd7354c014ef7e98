"""Company endpoints: list/detail of what the caller may see; superusers
create and update, with clear field errors."""

import pytest

from companies.models import Company

LIST = "/api/v1/companies/"


def detail(company):
    return f"/api/v1/companies/{company.pk}/"


def test_a_key_sees_its_own_company(api_a, tenants):
    body = api_a.get(detail(tenants.a)).json()
    assert body["name"] == "Salon Alpha"
    assert body["timezone"] == "Europe/Berlin"


def test_the_list_pages_by_cursor(callers, tenants):
    for i in range(3):
        Company.objects.create(name=f"Extra {i}", slug=f"extra-{i}")
    client = callers["superuser"]
    first = client.get(LIST, {"page_size": 3}).json()
    second = client.get(first["next"]).json()
    names = [c["name"] for c in first["results"] + second["results"]]
    assert len(names) == len(set(names)) == 5


def test_a_superuser_creates_a_company(callers):
    response = callers["superuser"].post(
        LIST,
        {
            "name": "Nail Studio",
            "slug": "nails",
            "timezone": "Europe/Vienna",
            "contact_phone": "0043 660 1234567",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    company = Company.objects.get(slug="nails")
    assert response.json()["id"] == company.pk
    assert company.contact_phone == "+436601234567"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "X", "slug": "alpha"}, "slug"),
        ({"name": "X", "slug": "x", "timezone": "Mars/Olympus"}, "timezone"),
        ({"name": "X", "slug": "not a slug"}, "slug"),
        ({"slug": "x"}, "name"),
        ({"name": "X", "slug": "x", "contact_phone": "123"}, "contact_phone"),
        ({"name": "X", "slug": "x", "contact_email": "nope"}, "contact_email"),
        ({"name": "X", "slug": "x", "is_active": "yes"}, "is_active"),
        ({"name": 7, "slug": "x"}, "name"),
    ],
)
def test_invalid_company_data_is_a_400_naming_the_field(body, field, callers, tenants):
    before = Company.objects.count()
    response = callers["superuser"].post(LIST, body, format="json")
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]
    assert Company.objects.count() == before


def test_a_superuser_updates_a_company(callers, tenants):
    response = callers["superuser"].patch(detail(tenants.a), {"is_active": False}, format="json")
    assert response.status_code == 200
    tenants.a.refresh_from_db()
    assert tenants.a.is_active is False


@pytest.mark.parametrize("caller", ["owner_key", "owner", "member"])
def test_only_superusers_create_or_update_companies(caller, callers, tenants):
    client = callers[caller]
    assert client.post(LIST, {"name": "Y", "slug": "y"}, format="json").status_code == 403
    response = client.patch(detail(tenants.a), {"name": "Renamed"}, format="json")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == "Only superusers may do this."
    tenants.a.refresh_from_db()
    assert tenants.a.name == "Salon Alpha"
    assert not Company.objects.filter(slug="y").exists()


def test_the_id_and_creation_time_are_read_only(callers, tenants):
    response = callers["superuser"].patch(
        detail(tenants.a), {"id": 999, "created_at": "2000-01-01T00:00:00Z"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["id"] == tenants.a.pk
    assert not Company.objects.filter(pk=999).exists()
