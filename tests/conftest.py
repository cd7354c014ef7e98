"""Shared fixtures: three tenants (owner's company, another company, an
outsider user), and builders for real neonize message events."""

import pytest

from tests.tenants import Tenants

# process_guard: a test that starts a real process must be marked e2e (scripts/test --fast).
pytest_plugins = ["tests.process_guard", "pytester"]


@pytest.fixture
def tenants(db):
    """Company A (owner + member), company B (its own owner), and an outsider."""
    return Tenants.create()


@pytest.fixture
def company(tenants):
    return tenants.a


@pytest.fixture
def is_postgres():
    from django.db import connection

    return connection.vendor == "postgresql"
