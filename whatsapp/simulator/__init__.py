"""The project's WhatsApp simulator: WhatsApp's side of a linked device, on loopback.

It stands in for WhatsApp the way moto stands in for AWS: device credentials
made by scanning a QR or entering a pairing code, exactly one live connection
per credential (a second one replaces the first with a 440 conflict), inbound
messages from simulated phones that must be acknowledged (unacknowledged ones
are redelivered on reconnect), an offline queue, acks for sends, logout from
the phone, temporary bans, connection drops and keep-alive timeouts on command.

* `protocol` -- the JSON frames and the realistic ids, JIDs and codes;
* `records` -- a client connection and a device credential;
* `state` -- credentials, connections, queues and counters (no I/O);
* `server` -- the aiohttp application: the websocket for clients, the
  HTTP JSON control API and the demo page.

Run it with ``python manage.py whatsapp_simulator``; the transport that talks
to it is ``whatsapp.transport.simulator_client``.
"""
