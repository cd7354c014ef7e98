"""The HTTP side of webhooks: which targets are allowed, and one signed POST.

Targets are checked when an endpoint is saved and again before every request
(DNS may change in between): every address the host resolves to must be a
public one (an IPv6 address wrapping an IPv4 one is judged by the IPv4 address),
unless settings.WHATSAPP_WEBHOOKS["ALLOW_PRIVATE"] is set. The
request connects to the address that was checked (TLS still verifies the
certificate for the host name), so a DNS answer that changes between check
and connect (rebinding) cannot redirect it. Redirects are not followed either
(a public URL could redirect to a private one).
"""

import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests.certs
import urllib3
from django.conf import settings

from whatsapp.models.webhooks import signature_header

USER_AGENT = "aiadmin-webhooks/1"
MAX_RESPONSE_BYTES = 64 * 1024


class UnsafeWebhookURL(ValueError):
    """The URL is malformed, or resolves to an address webhooks may not reach."""


# IPv6 prefixes whose last 32 bits are an IPv4 address the traffic ends up at.
_IPV4_IN_LAST_32_BITS = (
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated, RFC 4291)
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT, RFC 2765)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # NAT64 local-use (RFC 8215), as /96
)
# A network's own NAT64 translator (RFC 8215): not globally reachable whatever it wraps.
_LOCAL_USE_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")


def embedded_ipv4(ip):
    """The IPv4 addresses an IPv6 address carries: IPv4-compatible, -mapped and
    -translated, NAT64 (well-known and local-use prefix), 6to4, and Teredo
    (server and, bit-inverted, client). Empty for IPv4 and plain IPv6."""
    if ip.version != 6:
        return ()
    found = []
    if any(ip in net for net in _IPV4_IN_LAST_32_BITS):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour:
        found.append(ip.sixtofour)
    if ip.teredo:
        found.extend(ip.teredo)  # (server, client)
    return tuple(dict.fromkeys(found))


def is_refused_address(ip):
    """True if webhooks may not reach `ip` (an ipaddress object): anything but a
    global unicast address. An IPv6 address that wraps an IPv4 address is judged
    by the IPv4 address (and Teredo and local-use NAT64 also by their own prefix,
    which is not globally reachable)."""
    if ip.version == 6:
        inner = embedded_ipv4(ip)
        if any(is_refused_address(v4) for v4 in inner) or ip in _LOCAL_USE_NAT64:
            return True
        if inner and not ip.teredo:
            return False  # only IPv4 in IPv6 clothing: the IPv4 address decides
    return not ip.is_global or ip.is_multicast


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: where to connect (the addresses that were checked)
    and what to ask for."""

    scheme: str
    host: str
    port: int
    request_uri: str
    addresses: tuple

    @property
    def host_header(self):
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def resolve_webhook_target(url, allow_private=None, resolve=socket.getaddrinfo):
    """Parse and resolve `url`; raise UnsafeWebhookURL unless every address is
    allowed. The request then connects to these very addresses (no second DNS
    lookup that a rebinding attacker could answer differently)."""
    if allow_private is None:
        allow_private = settings.WHATSAPP_WEBHOOKS["ALLOW_PRIVATE"]
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeWebhookURL(f"not a valid URL: {exc}") from None
    if parts.scheme not in {"http", "https"}:
        raise UnsafeWebhookURL("the URL must start with http:// or https://")
    host = parts.hostname
    if not host:
        raise UnsafeWebhookURL("the URL has no host")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookURL(f"cannot resolve {host}: {exc}") from None
    addresses = tuple(dict.fromkeys(info[4][0].split("%")[0] for info in infos))
    if not addresses:
        raise UnsafeWebhookURL(f"{host} resolves to no address")
    if not allow_private:
        for address in addresses:
            if is_refused_address(ipaddress.ip_address(address)):
                raise UnsafeWebhookURL(
                    f"{host} resolves to {address}, a private/loopback/link-local or reserved "
                    "address; webhooks only reach public addresses (set "
                    "WEBHOOK_ALLOW_PRIVATE=1 to allow internal receivers)"
                )
    uri = parts.path or "/"
    if parts.query:
        uri = f"{uri}?{parts.query}"
    return Target(parts.scheme, host, port, uri, addresses)


def validate_webhook_url(url, allow_private=None, resolve=socket.getaddrinfo):
    """Return `url` if webhooks may POST to it, else raise UnsafeWebhookURL."""
    resolve_webhook_target(url, allow_private, resolve)
    return url


@dataclass(frozen=True)
class PostOutcome:
    status_code: int | None
    duration_ms: int
    error: str = ""
    body: bytes = b""
    refused: bool = False  # the target is not allowed: retrying cannot help

    @property
    def ok(self):
        return self.status_code is not None and 200 <= self.status_code < 300

    @property
    def excerpt(self):
        return self.body[:2000].decode("utf-8", "replace")

    def json(self):
        """The response body as JSON, or raise ValueError."""
        return json.loads(self.body.decode("utf-8"))

    def describe(self):
        if self.error:
            return self.error
        return f"HTTP {self.status_code}"


def encode_body(document):
    return json.dumps(document, separators=(",", ":"), sort_keys=True, default=str).encode()


def signed_headers(secrets, event_id, body, timestamp=None):
    """The request headers; `secrets` is one secret or a list (each adds a
    signature to X-Aiadmin-Signature: see signature_header)."""
    if isinstance(secrets, str):
        secrets = [secrets]
    timestamp = int(time.time() if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Aiadmin-Event-Id": str(event_id),
        "X-Aiadmin-Timestamp": str(timestamp),
        "X-Aiadmin-Signature": signature_header(secrets, timestamp, body),
    }


def _pool(target, address, timeout):
    common = {
        "timeout": urllib3.Timeout(connect=timeout, read=timeout),
        "retries": False,
        "maxsize": 1,
    }
    if target.scheme == "https":
        # Connect to the checked address; verify the certificate for the URL's host name.
        return urllib3.HTTPSConnectionPool(
            address,
            target.port,
            cert_reqs="CERT_REQUIRED",
            ca_certs=settings.WHATSAPP_WEBHOOKS.get("CA_BUNDLE") or requests.certs.where(),
            assert_hostname=target.host,
            server_hostname=target.host,
            **common,
        )
    return urllib3.HTTPConnectionPool(address, target.port, **common)


# Media fetched from a URL (services.media_outbound) connects the same way.
connection_pool = _pool


def post_signed(url, secrets, event_id, body, timeout, resolve=socket.getaddrinfo):
    """POST `body` (bytes) to `url`, signed with `secrets` (one or a list); never
    raises for network trouble."""
    started = time.monotonic()

    def elapsed():
        return int((time.monotonic() - started) * 1000)

    try:
        target = resolve_webhook_target(url, resolve=resolve)
    except UnsafeWebhookURL as exc:
        return PostOutcome(None, elapsed(), f"refused: {exc}", refused=True)
    headers = {**signed_headers(secrets, event_id, body), "Host": target.host_header}
    failures = []
    for address in target.addresses:  # the next checked address only if one refuses
        try:
            status, content = _post_once(target, address, headers, body, timeout)
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass
            failures.append(f"{address}: {exc}")
            continue
        except urllib3.exceptions.TimeoutError:
            return PostOutcome(None, elapsed(), f"timeout after {timeout:g}s")
        except urllib3.exceptions.HTTPError as exc:
            return PostOutcome(None, elapsed(), f"{type(exc).__name__}: {exc}"[:1000])
        error = "" if 200 <= status < 300 else f"HTTP {status}"
        return PostOutcome(status, elapsed(), error, content)
    return PostOutcome(None, elapsed(), f"connection failed: {'; '.join(failures)}"[:1000])


def _post_once(target, address, headers, body, timeout):
    pool = _pool(target, address, timeout)
    try:
        response = pool.urlopen(
            "POST",
            target.request_uri,
            body=body,
            headers=headers,
            redirect=False,
            assert_same_host=False,
            preload_content=False,
        )
        try:
            return response.status, response.read(MAX_RESPONSE_BYTES, decode_content=True) or b""
        finally:
            response.release_conn()
    finally:
        pool.close()
