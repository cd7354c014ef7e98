"""The job stage alone: a backlog of stored messages -> jobs finished, replies queued.

N messages are stored from M companies (record_inbound_messages in batches, as
the worker's group commit does; each company has a keyword rule answering
every message, the default handler). No session worker runs, so replies stay
queued (their send hints go nowhere). Then either:

* `--mode cluster` (default): `manage.py runcluster --queue jobs` drains the
  backlog; printed: jobs finished per second, first to last.
* `--mode inproc`: this process runs the tasks itself, one after the other,
  as a cluster worker would (whatsapp.tasks.process_message_job); printed:
  jobs/s and, with --profile, a cProfile of it. Shows the cost of one job
  without django-q2 around it.

    .venv/bin/python bench/job_stage.py --db sqlite -n 1000
    .venv/bin/python bench/job_stage.py --db postgres --broker redis -n 1000
    .venv/bin/python bench/job_stage.py --db sqlite -n 500 --mode inproc --profile
"""

import os
import tempfile
import time

from _setup import configure, machine, parser


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=1000, help="messages in the backlog")
    p.add_argument("--companies", type=int, default=20)
    p.add_argument("--mode", choices=["cluster", "inproc"], default="cluster")
    p.add_argument("--profile", action="store_true", help="cProfile (inproc mode)")
    p.add_argument("--q-workers", type=int, default=None, help="job cluster workers")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    if args.q_workers:
        os.environ["Q_WORKERS"] = str(args.q_workers)
    label = configure(args.db, args.broker, debug=False)

    from _procs import Child, child_env, wait_until
    from _workers import make_companies
    from django.conf import settings

    from whatsapp.models import AutoReplyRule, InboundMessage, OutboundMessage, ProcessingJob
    from whatsapp.services.inbound import record_inbound_messages
    from whatsapp.transport.build import message_event
    from whatsapp.transport.normalize import normalize_message

    ids = make_companies(args.companies, "job")
    for company_id in ids:
        AutoReplyRule.objects.create(
            company_id=company_id, match="any", reply_text="re {name}", priority=1
        )
    items = [
        (
            ids[i % len(ids)],
            normalize_message(
                message_event(
                    f"3EB0{i:016X}",
                    f"4917{i % 9000000 + 1000000:07d}@s.whatsapp.net",
                    f"hello {i}",
                    push_name=f"m{i}",
                ).SerializeToString()
            ),
        )
        for i in range(args.n)
    ]
    t0 = time.perf_counter()
    for start in range(0, len(items), 50):
        record_inbound_messages(items[start : start + 50])
    store_rate = args.n / (time.perf_counter() - t0)
    assert InboundMessage.objects.count() == args.n

    if args.mode == "inproc":
        from whatsapp.tasks import process_message_job

        message_ids = list(InboundMessage.objects.order_by("pk").values_list("pk", flat=True))
        prof = None
        if args.profile:
            import cProfile

            prof = cProfile.Profile()
        t0 = time.perf_counter()
        c0 = time.process_time()
        for message_id in message_ids:
            if prof is not None:
                prof.runcall(process_message_job, message_id)
            else:
                process_message_job(message_id)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - c0
        rate = args.n / elapsed
        if prof is not None:
            import pstats

            pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
            pstats.Stats(prof).sort_stats("tottime").print_stats(20)
    else:
        log_dir = tempfile.mkdtemp(prefix="aiadmin-bench-jobs-")
        import psutil

        cluster = Child("runcluster", ["runcluster", "--queue", "jobs"], child_env(), log_dir)
        tree = {}  # pid -> process, to read the CPU time of every cluster process at the end

        def finished():
            for proc in [psutil.Process(cluster.pid), *psutil.Process(cluster.pid).children(True)]:
                tree.setdefault(proc.pid, proc)
            return ProcessingJob.objects.filter(status="succeeded").count() >= args.n

        try:
            done = wait_until(finished, args.timeout, interval=0.2)
            if not done:
                raise SystemExit(f"timed out; cluster log:\n{cluster.tail()}")
            cpu = 0.0
            for proc in tree.values():
                try:
                    cpu += sum(proc.cpu_times()[:2])
                except psutil.Error:
                    pass
        finally:
            cluster.stop()
        finished = sorted(ProcessingJob.objects.values_list("finished_at", flat=True))
        rate = (len(finished) - 1) / (finished[-1] - finished[0]).total_seconds()
    succeeded = ProcessingJob.objects.filter(status="succeeded").count()
    replies = OutboundMessage.objects.count()
    print(f"machine: {machine()}")
    print(
        f"database: {label}; mode: {args.mode}; job cluster workers: "
        f"{settings.Q_CLUSTER['workers']}; companies: {len(ids)}"
    )
    print(f"stored {args.n} messages at {store_rate:8.1f} msg/s (group commits of 50)")
    print(f"job stage: {rate:8.1f} jobs/s ({succeeded} succeeded, {replies} replies queued)")
    if args.mode == "inproc":
        print(f"CPU of this process: {cpu / args.n * 1000:.2f} ms per job")
    else:
        print(
            f"CPU of the cluster's processes, start-up included: {cpu:.1f} s, "
            f"{cpu / args.n * 1000:.1f} ms per job"
        )


if __name__ == "__main__":
    main()
