"""The first run: a new superuser and no company yet. Every WhatsApp page says
what to do next instead of a bare 403; the site is named; the index leads to
the health dashboard first."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def root(client, django_user_model):
    user = django_user_model.objects.create_superuser("first", "first@example.com", "pw-first-1!")
    client.force_login(user)
    return client


def test_the_health_dashboard_shows_the_next_steps_to_a_superuser_without_companies(root):
    response = root.get("/admin/whatsapp/health/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "No company yet" in html and 'href="/admin/companies/company/add/"' in html
    assert "scan" in html.lower() and "Linked devices" in html
    assert 'id="header"' in html and "admin/css/base.css" in html  # the admin's frame


def test_the_session_list_is_reachable_and_shows_the_same_steps(root):
    response = root.get("/admin/whatsapp/whatsappsession/")
    assert response.status_code == 200
    assert "No company yet" in response.content.decode()


def test_the_index_lists_connection_health_first_then_the_sessions(root):
    html = root.get("/admin/").content.decode()
    section = html[html.index("app-whatsapp") :]
    health = section.index('href="/admin/whatsapp/health/"')
    sessions = section.index('href="/admin/whatsapp/whatsappsession/"')
    assert health < sessions
    assert ">WhatsApp<" in html and "Whatsapp" not in html


def test_the_site_is_named_and_has_no_view_site_link_to_nowhere(root):
    html = root.get("/admin/").content.decode()
    assert "<title>WhatsApp connections of your companies | aiadmin</title>" in html
    assert "Django administration" not in html and "View site" not in html


def test_a_user_of_no_company_is_told_why_not_shown_a_bare_403(client, django_user_model):
    user = django_user_model.objects.create_user("lonely", password="pw-lonely-1!", is_staff=True)
    client.force_login(user)
    response = client.get("/admin/whatsapp/health/")
    assert response.status_code == 403
    assert "Ask an owner to add you" in response.content.decode()


def test_once_a_company_exists_the_dashboard_offers_to_start_its_session(root):
    from companies.models import Company

    Company.objects.create(name="Salon First", slug="salon-first")
    html = root.get("/admin/whatsapp/health/").content.decode()
    assert "Salon First" in html and "/admin/whatsapp/health/start/" in html


def test_the_address_a_new_user_opens_first_leads_to_the_admin(client):
    """http://127.0.0.1:8000/ was a debug "Page not found": there is no public site."""
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/admin/"
