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


def teredo(server, client):
    """A Teredo address (2001::/32): server in bits 32-63, client inverted in the last 32."""
    import ipaddress

    s = int(ipaddress.IPv4Address(server))
    c = int(ipaddress.IPv4Address(client)) ^ 0xFFFFFFFF
    return str(ipaddress.IPv6Address((0x20010000 << 96) | (s << 64) | (0x8000 << 48) | c))


# IPv6 forms that carry an IPv4 address (address, the IPv4 it carries).
PRIVATE_INSIDE_IPV6 = [
    ("::127.0.0.1", "127.0.0.1"),  # IPv4-compatible (deprecated ::/96)
    ("::169.254.169.254", "169.254.169.254"),
    ("::10.1.2.3", "10.1.2.3"),
    ("::192.168.0.10", "192.168.0.10"),
    ("::ffff:169.254.169.254", "169.254.169.254"),  # IPv4-mapped
    ("::ffff:10.1.2.3", "10.1.2.3"),
    ("::ffff:0:127.0.0.1", "127.0.0.1"),  # IPv4-translated (SIIT)
    ("64:ff9b::169.254.169.254", "169.254.169.254"),  # NAT64 well-known prefix
    ("64:ff9b::127.0.0.1", "127.0.0.1"),
    ("64:ff9b::10.1.2.3", "10.1.2.3"),
    ("64:ff9b::192.168.0.10", "192.168.0.10"),
    ("64:ff9b:1::169.254.169.254", "169.254.169.254"),  # NAT64 local-use prefix
    ("64:ff9b:1::127.0.0.1", "127.0.0.1"),
    ("64:ff9b:1::10.1.2.3", "10.1.2.3"),
    ("64:ff9b:1::192.168.0.10", "192.168.0.10"),
    ("2002:a9fe:a9fe::1", "169.254.169.254"),  # 6to4
    ("2002:7f00:1::1", "127.0.0.1"),
    ("2002:a01:203::", "10.1.2.3"),
    ("2002:c0a8:a::1", "192.168.0.10"),
    (teredo("169.254.169.254", "8.8.8.8"), "169.254.169.254"),  # Teredo server
    (teredo("65.54.227.120", "127.0.0.1"), "127.0.0.1"),  # Teredo client
    (teredo("65.54.227.120", "10.1.2.3"), "10.1.2.3"),
    (teredo("65.54.227.120", "192.168.0.10"), "192.168.0.10"),
]


class TestIPv4InsideIPv6:
    """Every IPv6 form that embeds an IPv4 address is judged by that address."""

    @pytest.mark.parametrize("address,inner", PRIVATE_INSIDE_IPV6)
    def test_the_embedded_ipv4_address_is_found(self, address, inner):
        import ipaddress

        from whatsapp.services.webhook_http import embedded_ipv4

        found = embedded_ipv4(ipaddress.ip_address(address))
        assert ipaddress.IPv4Address(inner) in found

    @pytest.mark.parametrize("address,inner", PRIVATE_INSIDE_IPV6)
    def test_a_private_address_wrapped_in_ipv6_is_refused_when_saved(self, address, inner):
        with pytest.raises(UnsafeWebhookURL, match="public addresses"):
            validate_webhook_url(f"http://[{address}]:8080/hook", allow_private=False)

    @pytest.mark.parametrize("address,inner", PRIVATE_INSIDE_IPV6)
    def test_a_name_resolving_to_a_wrapped_private_address_is_refused_at_delivery(
        self, address, inner, settings
    ):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        lookups = []

        def resolve(host, port, type=None):  # public when saved, rebound since
            lookups.append(host)
            return [(10, 1, 6, "", (address, port, 0, 0))]

        outcome = post_signed(
            "https://hooks.example.com/x", "whsec_x", uuid.uuid4(), b"{}", 2.0, resolve=resolve
        )
        assert lookups == ["hooks.example.com"]
        assert outcome.refused and not outcome.ok
        assert address in outcome.error and "public addresses" in outcome.error

    @pytest.mark.parametrize(
        "address", ["::ffff:127.0.0.1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::1", "::127.0.0.1"]
    )
    def test_a_delivery_to_a_wrapped_private_literal_is_dead_lettered_without_a_request(
        self, address, tenants, settings
    ):
        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        WebhookEndpoint.objects.create(company=tenants.a, url=f"http://[{address}]:9/hook")
        inbound(tenants.a)
        delivery = WebhookDelivery.objects.get()
        assert deliver_webhook(delivery.pk) == Status.DEAD
        delivery.refresh_from_db()
        assert "refused" in delivery.last_error and "public addresses" in delivery.last_error
        assert delivery.attempt_log.get().status_code is None

    @pytest.mark.parametrize("address", PRIVATE_INSIDE_IPV6[::4], ids=lambda a: a[0])
    def test_the_admin_refuses_a_wrapped_private_endpoint_url(
        self, address, client, tenants, settings
    ):
        from django.urls import reverse

        settings.WHATSAPP_WEBHOOKS = {**settings.WHATSAPP_WEBHOOKS, "ALLOW_PRIVATE": False}
        client.force_login(tenants.superuser)
        response = client.post(
            reverse("admin:whatsapp_webhookendpoint_add"),
            {"company": tenants.a.pk, "url": f"http://[{address[0]}]/hook", "is_active": "on"},
            secure=True,
        )
        assert response.status_code == 200
        assert "public addresses" in response.content.decode()
        assert not WebhookEndpoint.objects.exists()

    @pytest.mark.parametrize(
        "address",
        [
            "::ffff:93.184.215.14",  # mapped public
            "64:ff9b::93.184.215.14",  # what DNS64 synthesises for a public IPv4-only host
            "2002:5db8:d70e::1",  # 6to4 of a public address
            "2606:4700:4700::1111",  # plain global IPv6
        ],
    )
    def test_a_public_address_in_ipv6_clothing_is_still_accepted(self, address):
        assert validate_webhook_url(f"https://[{address}]/hook", allow_private=False)

    def test_local_use_nat64_and_teredo_are_refused_even_around_public_addresses(self):
        # 64:ff9b:1::/48 is a network's own translator (RFC 8215) and Teredo is not
        # globally reachable (IANA special-purpose registry): both stay refused.
        for address in ["64:ff9b:1::93.184.215.14", teredo("65.54.227.120", "93.184.215.14")]:
            with pytest.raises(UnsafeWebhookURL, match="public addresses"):
                validate_webhook_url(f"https://[{address}]/hook", allow_private=False)
