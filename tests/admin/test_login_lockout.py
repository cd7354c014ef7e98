"""Admin login: wrong passwords lock out that username from that address
(django-axes), answered with 429. The right password from another address keeps
working; an admin lifts a lockout in the admin (Axes -> Access attempts) or with
`manage.py axes_reset`."""

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"
ATTACKER = "203.0.113.66"
OFFICE = "198.51.100.10"


def login(client, username, password, address):
    return client.post(
        LOGIN,
        {"username": username, "password": password, "next": "/admin/"},
        REMOTE_ADDR=address,
        secure=True,
    )


def logged_in(response):
    return response.status_code == 302 and response["Location"] == "/admin/"


def fail_until_locked(username="owner", address=ATTACKER):
    limit = settings.AXES_FAILURE_LIMIT
    for i in range(limit - 1):
        response = login(Client(), username, f"wrong-{i}", address)
        assert response.status_code == 200  # the form again, with its error
    return login(Client(), username, "wrong-last", address)


def test_wrong_passwords_lock_the_username_from_that_address_with_a_429(tenants):
    assert settings.AXES_FAILURE_LIMIT <= 10
    locked = fail_until_locked()
    assert locked.status_code == 429
    client = Client()
    right_password = login(client, "owner", "pw-owner-123!", ATTACKER)
    assert right_password.status_code == 429
    assert "_auth_user_id" not in client.session


def test_the_right_password_from_another_address_keeps_working(tenants):
    fail_until_locked()
    assert logged_in(login(Client(), "owner", "pw-owner-123!", OFFICE))


def test_other_users_from_the_same_address_are_not_locked(tenants):
    fail_until_locked("owner")
    assert logged_in(login(Client(), "member", "pw-member-123!", ATTACKER))


def test_a_success_before_the_limit_forgets_the_failures(tenants):
    limit = settings.AXES_FAILURE_LIMIT
    for i in range(limit - 1):
        login(Client(), "owner", f"typo-{i}", OFFICE)
    assert logged_in(login(Client(), "owner", "pw-owner-123!", OFFICE))
    for i in range(limit - 1):
        assert login(Client(), "owner", f"typo-again-{i}", OFFICE).status_code == 200


def test_axes_reset_lifts_a_lockout(tenants):
    fail_until_locked()
    call_command("axes_reset", verbosity=0)
    assert logged_in(login(Client(), "owner", "pw-owner-123!", ATTACKER))


def test_a_superuser_sees_and_lifts_a_lockout_in_the_admin(tenants):
    fail_until_locked()
    attempt = AccessAttempt.objects.get(username="owner", ip_address=ATTACKER)
    admin = Client()
    admin.force_login(tenants.superuser)
    listing = admin.get("/admin/axes/accessattempt/", secure=True)
    assert listing.status_code == 200 and ATTACKER in listing.content.decode()
    deleted = admin.post(
        f"/admin/axes/accessattempt/{attempt.pk}/delete/", {"post": "yes"}, secure=True
    )
    assert deleted.status_code == 302
    assert logged_in(login(Client(), "owner", "pw-owner-123!", ATTACKER))


def test_company_staff_cannot_see_lockouts(tenants):
    fail_until_locked("member")
    owner = Client()
    owner.force_login(tenants.owner)
    assert owner.get("/admin/axes/accessattempt/", secure=True).status_code == 403
