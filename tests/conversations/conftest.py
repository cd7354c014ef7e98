import pytest

from tests.e2e_processes import AppProcesses, Simulator, pair_companies
from whatsapp.services.control import start_session

from .helpers import setup_company


@pytest.fixture
def live(tmp_path, tenants):
    """Company A paired against the WhatsApp simulator, served by a real
    `runworker whatsapp` and the job cluster (real processes, test database)."""
    sim = Simulator(tmp_path).start()
    app = AppProcesses(tmp_path, sim, WHATSAPP_RECONCILE_INTERVAL=1, WHATSAPP_LEASE_TTL=10)
    company = setup_company(tenants.a, reply="Hello {name}")
    start_session(company.pk, actor="e2e test")
    app.start_workers("w1")
    app.start_qcluster()
    try:
        pair_companies(sim, [company.pk], app)
        yield sim, app, company
    finally:
        app.stop_all()
        sim.stop()
