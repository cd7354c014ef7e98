"""Duplicate storm: N distinct messages, each delivered 3 times, concurrently
across 2 worker processes. Prints the time taken and checks the outcome:
exactly N rows and N jobs, and 2N duplicates blocked.

    .venv/bin/python bench/duplicate_storm.py --db postgres -n 100000
    .venv/bin/python bench/duplicate_storm.py --db sqlite -n 20000

Each process gets every message (in its own shuffled order) and one of them
also gets a third copy, so the two processes race for every single message.
"""

import multiprocessing as mp
import random
import time

from _setup import configure, machine, parser


def deliver(args):
    env, company_id, n, copies, seed = args
    import os

    os.environ.update(env)
    import django

    django.setup()
    from whatsapp.services.inbound import record_inbound_message
    from whatsapp.transport.build import message_event
    from whatsapp.transport.normalize import normalize_message

    order = [i for i in range(n) for _ in range(copies)]
    random.Random(seed).shuffle(order)
    created = duplicate = 0
    for i in order:
        event = message_event(
            f"3EB0{i:016X}", f"4917{i % 9000000 + 1000000:07d}@s.whatsapp.net", f"storm {i}"
        )
        outcome = record_inbound_message(company_id, normalize_message(event.SerializeToString()))
        created += outcome.created
        duplicate += outcome.status == "duplicate"
    return created, duplicate


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=100_000, help="distinct messages")
    args = p.parse_args()
    label = configure(args.db, args.broker, debug=False)
    import os

    from django.db import connections

    from companies.models import Company
    from whatsapp.models import InboundMessage, ProcessingJob, WhatsAppSession

    company = Company.objects.create(name="Storm", slug="storm")
    WhatsAppSession.objects.create(company=company)
    connections.close_all()
    env = {k: v for k, v in os.environ.items()}
    jobs = [(env, company.pk, args.n, 2, 1), (env, company.pk, args.n, 1, 2)]
    start = time.perf_counter()
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(deliver, jobs)
    elapsed = time.perf_counter() - start

    rows = InboundMessage.objects.filter(company=company).count()
    job_count = ProcessingJob.objects.filter(message__company=company).count()
    blocked = WhatsAppSession.objects.get(company=company).duplicates_blocked
    from django_q.brokers import get_broker

    queued = get_broker().queue_size()  # no cluster runs: every enqueued task is still there
    created = sum(r[0] for r in results)
    deliveries = 3 * args.n
    print(f"machine: {machine()}")
    print(f"database: {label}; {args.n} distinct messages x 3 deliveries over 2 processes")
    print(f"time: {elapsed:.1f} s  ({deliveries / elapsed:.0f} deliveries/s)")
    print(
        f"rows: {rows}  jobs: {job_count}  queued tasks: {queued}  created: {created}  "
        f"duplicates blocked: {blocked}"
    )
    ok = rows == job_count == queued == created == args.n and blocked == 2 * args.n
    print("outcome: OK (exactly one row and one job per message)" if ok else "outcome: WRONG")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
