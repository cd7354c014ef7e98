"""A rogue WhatsApp client: the seed's second process fighting over one account.

The Node system's session pool created a second Baileys socket for a company
without closing the first, and both reconnected whenever they were replaced:
WhatsApp answered every connect with 440 to the other one, every 5-6 seconds,
forever. This process plays that other side against the simulator with a
company's stored credential: connect, and whenever the connection ends
(replaced or otherwise), connect again after `--reconnect-delay` seconds.

    python -m tests.whatsapp.rogue_client --company 7 --url ws://127.0.0.1:8765 \\
        --store-dir /tmp/x/store --seconds 30 --reconnect-delay 0.5

Prints one line per event (`connect`, `Connected`, `StreamReplaced`, ...).
"""

import argparse
import asyncio
import os
import time


async def fight(args):
    from whatsapp.transport import base
    from whatsapp.transport.simulator_client import SimulatorTransport

    transport = SimulatorTransport(url=args.url, store_dir=args.store_dir)
    end = time.monotonic() + args.seconds
    ending = (base.StreamReplaced, base.LoggedOut, base.TemporaryBan, base.Closed)
    while time.monotonic() < end:
        over = asyncio.Event()

        async def sink(event, over=over):
            print(type(event).__name__, flush=True)
            if isinstance(event, ending):
                over.set()

        client = transport.new_client(base.ClientSpec(company_id=args.company), sink)
        print("connect", flush=True)
        await client.start()
        try:
            await asyncio.wait_for(over.wait(), max(0.1, end - time.monotonic()))
        except TimeoutError:
            pass
        await client.stop()
        await asyncio.sleep(args.reconnect_delay)
    await transport.aclose()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--company", type=int, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--store-dir", required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--reconnect-delay", type=float, default=0.5)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    import django

    django.setup()
    asyncio.run(fight(args))


if __name__ == "__main__":
    main()
