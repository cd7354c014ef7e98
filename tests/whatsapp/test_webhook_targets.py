"""Where webhooks may go: public addresses only (unless allowed), the request
sent to the very address that was checked, and https verified by host name
(real TLS with a local CA)."""

import ssl
import uuid

import pytest
import trustme

from whatsapp.models import WebhookDelivery, WebhookEndpoint
from whatsapp.services.inbound import record_inbound_message
from whatsapp.services.webhook_http import UnsafeWebhookURL, post_signed, validate_webhook_url
from whatsapp.services.webhooks import deliver_webhook
from whatsapp.transport.build import message_event
from whatsapp.transport.normalize import normalize_message

from .http_receiver import running_receiver

Status = WebhookDelivery.Status
pytestmark = pytest.mark.django_db


@pytest.fixture
def receiver():
    with running_receiver() as started:
        yield started


def receiver_url_as_https(receiver):
    return receiver.url.replace("http://", "https://")


def inbound(company):
    event = message_event("WAMID-1", "4915112345678@s.whatsapp.net", "Hello", push_name="Anna")
    return record_inbound_message(company.pk, normalize_message(event))


class TestTargets:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1/hook",
            "http://localhost:8000/hook",
            "http://10.1.2.3/hook",
            "http://192.168.0.10/hook",
            "http://172.16.5.4/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]/hook",
            "http://[fe80::1]/hook",
            "http://[::ffff:127.0.0.1]/hook",
            "http://0.0.0.0/hook",
            "http://100.64.0.1/hook",
        ],
    )
    def test_private_loopback_and_link_local_targets_are_refused(self, url, settings):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        with pytest.raises(UnsafeWebhookURL, match="public addresses"):
            validate_webhook_url(url)

    @pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///nohost", "not a url"])
    def test_malformed_urls_are_refused(self, url):
        with pytest.raises(UnsafeWebhookURL):
            validate_webhook_url(url, allow_private=False)

    def test_a_public_address_is_accepted_and_names_are_resolved(self):
        assert validate_webhook_url("https://93.184.215.14/hook", allow_private=False)

        def resolve_to_private(host, port, type=None):
            return [(2, 1, 6, "", ("10.0.0.7", port))]

        with pytest.raises(UnsafeWebhookURL, match="10.0.0.7"):
            validate_webhook_url(
                "https://hooks.example.com/x", allow_private=False, resolve=resolve_to_private
            )

    def test_the_setting_allows_private_targets(self, settings):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": True}
        assert validate_webhook_url("http://127.0.0.1:8080/hook")

    def test_the_request_goes_to_the_checked_address_without_a_second_lookup(
        self, receiver, settings
    ):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": True}
        port = receiver.server.server_address[1]
        lookups = []

        def resolve(host, port, type=None):  # .invalid never resolves in real DNS
            lookups.append(host)
            # Nothing listens on 127.0.0.2: the next checked address is tried.
            return [(2, 1, 6, "", ("127.0.0.2", port)), (2, 1, 6, "", ("127.0.0.1", port))]

        url = f"http://receiver.invalid:{port}/in/hook?tenant=a"
        outcome = post_signed(url, "whsec_x", uuid.uuid4(), b"{}", 2.0, resolve=resolve)
        assert outcome.ok, outcome.error
        assert lookups == ["receiver.invalid"]  # checked once, connected to what was checked
        (request,) = receiver.requests
        assert request.path == "/in/hook?tenant=a"
        assert request.headers["Host"] == f"receiver.invalid:{port}"

    def test_an_https_target_is_verified_by_host_name_while_connecting_to_the_checked_address(
        self, settings, tmp_path
    ):
        ca = trustme.CA()
        server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("hooks.example.test").configure_cert(server_context)
        ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
        settings.WHATSAPP_WEBHOOKS = {
            **settings.WHATSAPP_WEBHOOKS,
            "ALLOW_PRIVATE": True,
            "CA_BUNDLE": str(tmp_path / "ca.pem"),
        }

        def resolve(host, port, type=None):
            return [(2, 1, 6, "", ("127.0.0.1", port))]

        with running_receiver(server_context) as tls:
            good = post_signed(
                f"https://hooks.example.test:{tls.port}/h",
                "s",
                uuid.uuid4(),
                b"{}",
                5.0,
                resolve=resolve,
            )
            wrong_name = post_signed(
                f"https://other.example.test:{tls.port}/h",
                "s",
                uuid.uuid4(),
                b"{}",
                5.0,
                resolve=resolve,
            )
            plain = post_signed(receiver_url_as_https(tls), "s", uuid.uuid4(), b"{}", 5.0)
        assert good.ok, good.error
        assert len(tls.requests) == 1
        assert tls.requests[0].headers["Host"] == f"hooks.example.test:{tls.port}"
        assert not wrong_name.ok and "other.example.test" in wrong_name.error
        assert not plain.ok and "SSL" in plain.error  # 127.0.0.1 is not in the certificate

    def test_a_delivery_to_a_private_target_is_dead_lettered_without_a_request(
        self, tenants, receiver, settings
    ):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        WebhookEndpoint.objects.create(company=tenants.a, url=receiver.url)
        inbound(tenants.a)
        delivery = WebhookDelivery.objects.get()

        assert deliver_webhook(delivery.pk) == Status.DEAD
        delivery.refresh_from_db()
        assert "refused" in delivery.last_error
        assert receiver.requests == []
