"""Connection events in plain words; the raw reason and worker behind "details"."""

import pytest

from whatsapp.models.event_words import describe_event


@pytest.mark.parametrize(
    ("kind", "reason", "text"),
    [
        ("lease_acquired", "epoch 1", "A worker took charge of this session"),
        ("connected", "491701234567:7@s.whatsapp.net", "Connected as +491701234567"),
        ("reconnected", "491701234567:7@s.whatsapp.net", "Connected again as +491701234567"),
        ("paired", "paired as 4930900000001:3@s.whatsapp.net", "Phone linked as +4930900000001"),
        ("starting", "start requested by owner (admin)", "Start requested by owner"),
        ("starting", "restart requested via API by key-1", "Restart requested via API by key-1"),
        ("stopped", "logout requested by owner (admin)", "Log out requested by owner"),
        ("stopped", "stop requested by owner (admin)", "Stop requested by owner"),
        ("stopped", "client 2 stopped: restart requested", "Connection closed"),
        ("starting", "start requested demo", "Start requested by demo"),
        (
            "connect_failed",
            "dial tcp 157.240.0.53:443: i/o timeout (failure 2; retry in 3.1s)",
            "Could not connect: WhatsApp's server did not answer in time (a slow or blocked "
            "network); trying again in 3 s",
        ),
        ("disconnected", "connection dropped", "Connection dropped; reconnecting by itself"),
        (
            "replaced",
            "another connection took over",
            "Another device or program took over this WhatsApp connection; paused",
        ),
    ],
)
def test_an_event_reads_as_plain_words(kind, reason, text):
    assert describe_event(kind, reason).text == text


def test_the_raw_reason_and_worker_are_kept_as_details():
    words = describe_event("lease_acquired", "epoch 1", "vm.30719.709a9e01")
    assert "epoch" not in words.text and "vm." not in words.text
    assert words.details == "epoch 1; worker vm.30719.709a9e01"


def test_a_jid_that_is_no_phone_stays_out_of_the_text():
    words = describe_event("connected", "12345@lid")
    assert words.text == "Connected" and words.details == "12345@lid"
