"""Latency: inbound event -> handler start, through a real `manage.py qcluster`.

The benchmark plays the session worker: at a steady rate it takes a serialized
neonize MessageEv (built by whatsapp/transport/build.py), normalises it and
records it with whatsapp.services.inbound.record_inbound_message (row, job,
enqueue, commit). A real qcluster subprocess runs the jobs; the company's
handler (bench/latency_handler.py) notes the moment it starts. Printed:
p50/p90/p99/max of event -> handler start, split into event -> commit (the
recording) and commit -> handler start (queue + cluster).

    .venv/bin/python bench/latency.py --db sqlite                    # embedded default
    .venv/bin/python bench/latency.py --db sqlite --poll 0.02        # ORM broker, faster poll
    .venv/bin/python bench/latency.py --db postgres --broker redis   # production
    .venv/bin/python bench/latency.py --db postgres                  # PostgreSQL, ORM broker

The ORM broker (the embedded default) polls: an idle cluster looks for new
tasks every Q_CLUSTER["poll"] seconds (settings: Q_POLL, default 0.1), so
about poll/2 is added on average. The Redis broker blocks on BLPOP instead.
"""

import json
import os
import shutil
import tempfile
import time

from _setup import configure, machine, parser

HANDLER = "latency"  # registered below as bench.latency_handler.record_start


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=400, help="messages measured (default 400)")
    p.add_argument("--rate", type=float, default=20.0, help="messages per second (default 20)")
    p.add_argument(
        "--poll",
        type=float,
        default=None,
        help="ORM broker poll interval in seconds (settings default 0.1)",
    )
    p.add_argument("--q-workers", type=int, default=2, help="qcluster workers (default 2)")
    p.add_argument(
        "--idle", type=float, default=10.0, help="seconds the idle cluster's CPU is measured"
    )
    args = p.parse_args()
    if args.poll is not None:
        os.environ["Q_POLL"] = str(args.poll)
    os.environ["Q_WORKERS"] = str(args.q_workers)
    os.environ["WHATSAPP_EXTRA_INBOUND_HANDLERS"] = json.dumps(
        {HANDLER: {"path": "bench.latency_handler.record_start", "label": "Latency benchmark"}}
    )
    label = configure(args.db, args.broker, debug=False)

    from _procs import Child, child_env, percentile, wait_until
    from django.conf import settings
    from django.db import close_old_connections

    from companies.models import Company
    from whatsapp.models import ProcessingJob, WhatsAppSession
    from whatsapp.services.inbound import record_inbound_message
    from whatsapp.transport.build import message_event
    from whatsapp.transport.normalize import normalize_message

    company = Company.objects.create(name="Latency", slug="latency", inbound_handler=HANDLER)
    WhatsAppSession.objects.create(company=company)
    warmup = 5
    events = [
        (
            f"3EB0LAT{i:013d}",
            message_event(
                f"3EB0LAT{i:013d}",
                f"4917{1000000 + i:07d}@s.whatsapp.net",
                f"latency {i}",
                push_name="Bench",
            ).SerializeToString(),
        )
        for i in range(warmup + args.n)
    ]

    def finished(ids):
        return ProcessingJob.objects.filter(
            message__wa_message_id__in=ids, status=ProcessingJob.Status.SUCCEEDED
        ).count()

    def record(data):
        return record_inbound_message(company.pk, normalize_message(data))

    log_dir = tempfile.mkdtemp(prefix="aiadmin-bench-latency-")
    cluster = Child("qcluster", ["qcluster"], child_env(), log_dir)
    try:
        # Warm-up: the cluster is ready once these have run.
        for _wa_id, data in events[:warmup]:
            record(data)
        warm_ids = [wa_id for wa_id, _ in events[:warmup]]
        if not wait_until(lambda: finished(warm_ids) == warmup, timeout=120, interval=0.2):
            raise SystemExit(f"qcluster did not run the warm-up jobs:\n{cluster.tail()}")
        idle_cpu = cpu_share(cluster.pid, args.idle)

        sent = {}  # wa id -> (event time, commit time), wall clock
        interval = 1.0 / args.rate
        began = time.monotonic()
        late = 0
        for i, (wa_id, data) in enumerate(events[warmup:]):
            delay = began + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.01:
                late += 1
            t_event = time.time()
            outcome = record(data)
            sent[wa_id] = (t_event, time.time())
            assert outcome.created, outcome
        send_seconds = time.monotonic() - began

        ids = list(sent)
        if not wait_until(lambda: finished(ids) == len(ids), timeout=60 + args.n / 5, interval=0.5):
            done = finished(ids)
            raise SystemExit(f"only {done}/{len(ids)} jobs finished:\n{cluster.tail()}")
        close_old_connections()
        rows = ProcessingJob.objects.filter(message__wa_message_id__in=ids).values_list(
            "message__wa_message_id", "result"
        )
        to_handler, to_commit, queued = [], [], []
        for wa_id, note in rows:
            started = float(note.split()[1])
            t_event, t_commit = sent[wa_id]
            to_handler.append((started - t_event) * 1000)
            to_commit.append((t_commit - t_event) * 1000)
            queued.append((started - t_commit) * 1000)
    finally:
        cluster.stop()
    shutil.rmtree(log_dir, ignore_errors=True)  # kept when the run failed

    conf = settings.Q_CLUSTER
    broker = f"ORM broker, poll {conf['poll']:g} s" if args.broker == "orm" else "Redis broker"
    print(f"machine: {machine()}")
    print(f"database: {label} ({broker}); qcluster workers: {conf['workers']}")
    print(f"idle qcluster CPU (all its processes, {args.idle:g} s): {idle_cpu:.1%} of one core")
    print(
        f"{args.n} messages at {args.rate:g}/s (sent in {send_seconds:.1f} s, "
        f"{late} over 10 ms behind schedule)"
    )
    print("                               p50      p90      p99      max   (ms)")
    for name, values in [
        ("event -> handler start", to_handler),
        ("  event -> committed", to_commit),
        ("  committed -> handler start", queued),
    ]:
        print(
            f"{name:28s} {percentile(values, 50):8.1f} {percentile(values, 90):8.1f} "
            f"{percentile(values, 99):8.1f} {max(values):8.1f}"
        )


def cpu_share(pid, seconds):
    """CPU used by process `pid` and its children over `seconds`, as a share of one core."""
    import psutil

    def total():
        used = 0.0
        parent = psutil.Process(pid)
        for proc in [parent, *parent.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                used += times.user + times.system
            except psutil.Error:
                pass
        return used

    before = total()
    time.sleep(seconds)
    return (total() - before) / seconds


if __name__ == "__main__":
    main()
