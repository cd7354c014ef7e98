"""Clients of the simulator for its tests: the real SimulatorTransport, an event
recorder, and a simulator subprocess per test module (reset between tests)."""

import asyncio
import time

import pytest

from tests.e2e_processes import Simulator
from whatsapp.transport import base
from whatsapp.transport.simulator_client import SimulatorTransport

KEEPALIVE = 0.3
PHONE = "4915112345678"


@pytest.fixture(scope="module", name="simulator")
def simulator_fixture(tmp_path_factory):
    sim = Simulator(
        tmp_path_factory.mktemp("simulator"),
        keepalive=KEEPALIVE,
        extra_args=["--keepalive-max-fail", "1.5"],
    ).start()
    yield sim
    sim.stop()


@pytest.fixture(name="sim")
def sim_fixture(simulator):
    simulator.post("reset")
    return simulator


class Recorder:
    """An event sink that remembers everything, with waits for tests."""

    def __init__(self, fail_first_message=False):
        self.events = []
        self.fail_first_message = fail_first_message

    async def __call__(self, event):
        if isinstance(event, base.InboundMessage) and self.fail_first_message:
            self.fail_first_message = False
            self.events.append(("handler failed", event.event.Info.ID))
            raise RuntimeError("handler failed")
        self.events.append(event)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]

    def message_ids(self):
        return [e.event.Info.ID for e in self.of(base.InboundMessage)]

    async def wait(self, kind, count=1, timeout=10.0):
        deadline = time.monotonic() + timeout
        while len(self.of(kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"waited {timeout}s for {count} {kind.__name__}; got {self.events}"
                )
            await asyncio.sleep(0.02)
        return self.of(kind)[count - 1]


def run(body):
    return asyncio.run(asyncio.wait_for(body(), 60))


def transport(sim, tmp_path, **kwargs):
    return SimulatorTransport(
        url=sim.url,
        store_dir=tmp_path / "store",
        reconnect_step=kwargs.pop("reconnect_step", 0.2),
        **kwargs,
    )


async def paired_client(sim, t, company_id, recorder=None, phone=None):
    """A client of `company_id` paired by scanning its QR; returns (client, recorder)."""
    recorder = recorder or Recorder()
    client = t.new_client(base.ClientSpec(company_id=company_id), recorder)
    await client.start()
    await recorder.wait(base.QRCode)
    await asyncio.to_thread(sim.post, "scan", company=company_id, phone=phone)
    await recorder.wait(base.Connected)
    return client, recorder


async def resumed_client(t, company_id):
    recorder = Recorder()
    client = t.new_client(base.ClientSpec(company_id=company_id), recorder)
    await client.start()
    return client, recorder


async def inject(sim, company_id, **body):
    return await asyncio.to_thread(sim.post, "messages", company=company_id, **body)
