"""The client's IP address, one rule for every limit that counts per address
(failed API authentication, the API's anonymous rate limit, admin login lockouts).

Without a proxy (NUM_PROXIES=0, the default) it is the TCP peer, REMOTE_ADDR:
X-Forwarded-For is ignored, since anyone can send one and a new value per request
would be a new bucket each time. Behind NUM_PROXIES trusted proxies that each
append the address they saw, it is the NUM_PROXIES-th entry from the right: the
address the outermost proxy saw (what the client sent before it cannot move it).
"""

from django.conf import settings


def client_address(request):
    remote = request.META.get("REMOTE_ADDR", "")
    proxies = settings.NUM_PROXIES
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies <= 0 or not forwarded:
        return remote
    hops = [hop.strip() for hop in forwarded.split(",")]
    return hops[-min(proxies, len(hops))] or remote
