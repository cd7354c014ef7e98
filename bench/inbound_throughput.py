"""Inbound throughput of one process: event bytes -> committed row + enqueued job.

Prints messages/s of the full inbound path (parse the serialized neonize
MessageEv, normalise, record_inbound_message: message INSERT ... ON CONFLICT,
job row, counters, django-q2 enqueue, commit) beside the raw INSERT rate of
the same database in the same run: one INSERT of an equivalent row per
transaction, the physical limit when every message must be durable before it
is acked. The two are measured in alternating rounds (--rounds), so both see
the same load on a shared machine. Runs with DEBUG off, as in production.

    .venv/bin/python bench/inbound_throughput.py --db sqlite -n 3000
    .venv/bin/python bench/inbound_throughput.py --db postgres -n 3000
    .venv/bin/python bench/inbound_throughput.py --db postgres --broker redis -n 3000
"""

import asyncio
import time

from _setup import configure, machine, parser


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=3000, help="messages per measurement")
    p.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="alternate raw and inbound measurements this many times",
    )
    p.add_argument("--profile", action="store_true", help="cProfile the inbound path")
    p.add_argument(
        "--profile-batch",
        action="store_true",
        help="cProfile the group commit's transactions (record_inbound_messages, in the "
        "database thread)",
    )
    p.add_argument(
        "--sessions",
        type=int,
        default=50,
        help="concurrent sessions feeding the worker's group commit (default 50)",
    )
    p.add_argument(
        "--senders",
        type=int,
        default=0,
        help="distinct client phones writing (default 0: every message from a new phone, the "
        "worst case for contacts and chats; e.g. 200: returning clients, the common case)",
    )
    args = p.parse_args()
    label = configure(args.db, args.broker, debug=False)

    from django.conf import settings
    from django.db import connection, transaction
    from django.utils import timezone

    from companies.models import Company
    from whatsapp.models import InboundMessage, WhatsAppSession
    from whatsapp.services.inbound import record_inbound_message
    from whatsapp.transport.build import message_event
    from whatsapp.transport.normalize import normalize_message
    from whatsapp.worker.inbound import InboundBatcher

    company = Company.objects.create(name="Bench", slug="bench")
    WhatsAppSession.objects.create(company=company)
    n = args.n

    # Raw INSERT rate: the same table, one committed INSERT per message.
    table = InboundMessage._meta.db_table
    sql = (
        f"INSERT INTO {table} (company_id, wa_message_id, chat_jid, sender_jid, sender_phone, "
        "sender_lid, push_name, kind, text, is_group, sent_at, received_at, redeliveries) "
        "VALUES (%s, %s, %s, %s, %s, '', 'Client', 'text', %s, false, %s, %s, 0)"
    )
    now = timezone.now()

    def raw(indexes):
        for i in indexes:
            with transaction.atomic(), connection.cursor() as cur:
                cur.execute(
                    sql,
                    [
                        company.pk,
                        f"RAW{i:010d}",
                        "491701234567@s.whatsapp.net",
                        "491701234567@s.whatsapp.net",
                        "+491701234567",
                        f"raw {i}",
                        now,
                        now,
                    ],
                )

    def serialized_events(prefix):
        """n distinct MessageEv from n senders, serialized as the transport gets them."""
        senders = args.senders or 9000000
        return [
            message_event(
                f"{prefix}{i:016X}",
                f"4917{i % senders + 1000000:07d}@s.whatsapp.net",
                f"hello {i}",
                push_name="Bench",
            ).SerializeToString()
            for i in range(n)
        ]

    events = serialized_events("3EB0")

    def inbound(chunk):
        for data in chunk:
            record_inbound_message(company.pk, normalize_message(data))

    grouped_events = serialized_events("3EB1")
    batcher = InboundBatcher(settings.WHATSAPP["INBOUND_BATCH"])
    batch_prof = None
    if args.profile_batch:
        import cProfile

        from whatsapp.worker import inbound as worker_inbound

        batch_prof = cProfile.Profile()
        record_batch = worker_inbound.record_inbound_messages

        def profiled(items):  # runs in the database thread
            return batch_prof.runcall(record_batch, items)

        worker_inbound.record_inbound_messages = profiled

    def grouped(chunk):
        """As in a worker: --sessions sessions, each recording its next message
        once the previous one is committed (the transport acks in order), all
        through the worker's group commit (whatsapp/worker/inbound.py)."""

        async def session(mine):
            for data in mine:
                await batcher.record(company.pk, normalize_message(data))

        async def all_sessions():
            k = max(1, args.sessions)
            await asyncio.gather(*(session(chunk[i::k]) for i in range(k)))

        asyncio.run(all_sessions())

    # Interleaved in small rounds, so that both rates see the same machine load
    # (on a shared machine the load changes from one second to the next).
    rounds = max(1, min(args.rounds, n))
    raw_time = elapsed = grouped_time = 0.0
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
    for r in range(rounds):
        part = range(r * n // rounds, (r + 1) * n // rounds)
        start = time.perf_counter()
        raw(part)
        raw_time += time.perf_counter() - start
        chunk = events[part.start : part.stop]
        start = time.perf_counter()
        if prof is not None:
            prof.runcall(inbound, chunk)
        else:
            inbound(chunk)
        elapsed += time.perf_counter() - start
        start = time.perf_counter()
        grouped(grouped_events[part.start : part.stop])
        grouped_time += time.perf_counter() - start
    raw_rate = n / raw_time
    if prof is not None:
        import pstats

        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    if batch_prof is not None:
        import pstats

        pstats.Stats(batch_prof).sort_stats("tottime").print_stats(25)
    rate = n / elapsed
    assert InboundMessage.objects.filter(wa_message_id__startswith="3EB0").count() == n
    assert InboundMessage.objects.filter(wa_message_id__startswith="3EB1").count() == n
    grouped_rate = n / grouped_time

    print(f"machine: {machine()}")
    print(f"database: {label}, {n} messages, one process, {rounds} interleaved rounds")
    print(f"raw INSERT (1 row/txn): {raw_rate:8.0f} rows/s")
    share = rate / raw_rate
    print(f"inbound path, 1 msg/txn: {rate:7.0f} msgs/s  ({share:.0%} of raw)")
    print(
        f"inbound path, worker group commit ({args.sessions} sessions): {grouped_rate:7.0f} msgs/s"
        f"  ({grouped_rate / raw_rate:.0%} of raw; target >= 50%); "
        f"{batcher.batches} transactions, {n / max(1, batcher.batches):.1f} msgs each, "
        f"largest {batcher.largest}"
    )


if __name__ == "__main__":
    main()
