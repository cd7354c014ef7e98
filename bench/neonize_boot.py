"""neonize boot: how fast N real neonize clients of one process make their first attempt.

N `NeonizeClient`s (the worker's transport, real neonize 0.5.2) are started at
once, as a worker does after a restart; each start holds the process's
`go_lock` until Go is past its client-map writes (docs/worker.md, "neonize's Go
maps"), so starts are serial and the hold is the boot's cost. Printed: time
until every client has begun its dial (its start returned), the hold per start
(p50 / p99 / max) and what ended each hold (dial log line, event, end, safety),
then the time to stop them all.

    .venv/bin/python bench/neonize_boot.py -n 200                # offline: DNS fails fast
    .venv/bin/python bench/neonize_boot.py -n 200 --dial hang    # a dial that hangs (as a
                                                                 # slow live handshake)
    .venv/bin/python bench/neonize_boot.py -n 1000 --shards 4    # in 4 shard processes

--dial offline: these machines have no route to WhatsApp, so every dial fails
on DNS within milliseconds. --dial hang: the bench re-runs itself in private
mount and network namespaces (`unshare -mn`, root) where `web.whatsapp.com` is
127.0.0.1 and a local server accepts the TLS connection and never answers, so
every dial hangs like a slow handshake: the case where a start that waited for
the first event (or a fixed cap) would cost a full dial per company. Nothing
leaves the machine; the namespaces end with the process.
"""

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def in_namespace(argv):
    """Re-run this script in private mount + network namespaces with a hosts file
    that sends web.whatsapp.com to the (private) loopback."""
    folder = Path(tempfile.mkdtemp(prefix="aiadmin-bench-boot-"))
    hosts = folder / "hosts"
    hosts.write_text("127.0.0.1 localhost\n127.0.0.1 web.whatsapp.com\n")
    script = (
        "set -e; ip link set lo up; mount --bind {hosts} /etc/hosts; "
        "exec {python} {me} {args} --inside"
    ).format(
        hosts=hosts,
        python=sys.executable,
        me=Path(__file__).resolve(),
        args=" ".join(argv),
    )
    try:
        return subprocess.call(["unshare", "-mn", "sh", "-c", script])
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def blackhole(port=443):
    """Accept connections and never answer (a dial that hangs in its TLS handshake)."""
    held = []

    async def hold(reader, writer):
        held.append(writer)
        await reader.read()  # until the client gives up

    return await asyncio.start_server(hold, "127.0.0.1", port), held


def percentile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def boot(n, hang, shards=0):
    from whatsapp.transport import base
    from whatsapp.transport.neonize_client import NeonizeTransport
    from whatsapp.transport.shards import ShardedNeonizeTransport

    server = None
    if hang:
        server, _held = await blackhole()
    transport = ShardedNeonizeTransport(shards) if shards else NeonizeTransport()
    if shards:  # the shard processes' own start (interpreter, neonize) is not the boot
        await asyncio.gather(*(s.ensure() for s in transport._shards))
    events = []

    async def sink(event):
        events.append(event)

    clients = [
        transport.new_client(base.ClientSpec(company_id=100000 + i), sink) for i in range(n)
    ]
    t0 = time.monotonic()
    await asyncio.gather(*(c.start() for c in clients))
    booted = time.monotonic() - t0
    holds, ended_by = [], {}
    for c in clients:
        if hasattr(c, "settled_at"):  # in-process (a shard's clients live elsewhere)
            holds.append((c.settled_at - c.settle_began) * 1000)
            ended_by[c.settled_by] = ended_by.get(c.settled_by, 0) + 1
    if not hang:  # every offline dial ends (Closed) soon: let them, as the worker would
        deadline = time.monotonic() + 10
        while len(events) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    t1 = time.monotonic()
    await asyncio.gather(*(c.stop() for c in clients))
    stopped = time.monotonic() - t1
    await transport.aclose()
    if server is not None:
        server.close()
    return booted, holds, ended_by, stopped, len(events)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=200, help="clients (default 200)")
    p.add_argument("--dial", choices=["offline", "hang"], default="offline")
    p.add_argument("--shards", type=int, default=0, help="clients in K shard processes")
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    # Accepted like the other benches' (tests/bench passes them); no database is used.
    p.add_argument("--db", default="sqlite", help=argparse.SUPPRESS)
    p.add_argument("--broker", default="orm", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dial == "hang" and not args.inside:
        sys.exit(in_namespace([f"-n {args.n}", "--dial hang", f"--shards {args.shards}"]))

    store = tempfile.mkdtemp(prefix="aiadmin-bench-boot-store-")
    os.environ.update(
        DJANGO_SETTINGS_MODULE="aiadmin.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY="bench-" + "x" * 60,
        DJANGO_ALLOWED_HOSTS="localhost",
        AIADMIN_VAR_DIR=store,
        WHATSAPP_STORE_DIR=store,
        WHATSAPP_STORE_URL="",
        WHATSAPP_MAX_SESSIONS_PER_WORKER=str(max(args.n, 10)),
    )
    for key in ("DATABASE_URL", "REDIS_URL", "Q_BROKER"):  # no database, no broker
        os.environ.pop(key, None)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    print(f"neonize boot, {args.n} clients, dial {args.dial}, shards {args.shards or 'none'}")
    try:
        # Round 1 creates every company's store file (a first boot); round 2 opens
        # them again, as a worker does after a restart.
        for label in ("first boot (new store files)", "after a restart (stores exist)"):
            booted, holds, ended_by, stopped, events = asyncio.run(
                boot(args.n, args.dial == "hang", args.shards)
            )
            print(f"  {label}:")
            print(f"    every client began its dial: {booted:.2f} s ({args.n / booted:.0f}/s)")
            if holds:
                print(
                    f"    go_lock hold per start: p50 {statistics.median(holds):.0f} ms, "
                    f"p99 {percentile(holds, 0.99):.0f} ms, max {max(holds):.0f} ms; "
                    f"ended by {ended_by}"
                )
            print(f"    all stopped in: {stopped:.2f} s; events seen: {events}")
    finally:
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    main()
