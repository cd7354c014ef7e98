"""End to end: simulator phones -> stored -> job -> handler -> reply acked.

Real processes: the WhatsApp simulator (devices already paired), one
`runworker whatsapp` on the simulator transport, and `manage.py runcluster`
(the job cluster plus the maintenance cluster, as the Procfile runs them).
The handler is the default one (keyword rules) with one rule answering every
message with "re <push name>", each message carrying its own push name, so
every reply the simulator acknowledges names its message.

Two phases in one run, so the figures stand side by side on the same load:

1. inbound only vs end to end, at full speed: with the job cluster stopped,
   N messages are sent by the phones at once; printed is the rate at which
   they are stored (the inbound-only rate). Then the cluster starts and
   drains that backlog: the rate at which replies are acknowledged by the
   simulator (the end-to-end rate).
2. steady load at increasing rates (--rates, each for --seconds): the
   sustained answered rate and latency p50/p99 from the phone's send to the
   simulator's acknowledgement of the reply.

    .venv/bin/python bench/end_to_end.py --db sqlite                     # embedded default
    .venv/bin/python bench/end_to_end.py --db postgres --broker redis    # production
"""

import json
import os
import tempfile
import time
import urllib.request

from _setup import configure, machine, parser


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=2000, help="messages of the full-speed phase")
    p.add_argument("--rates", default="20,50,100", help="steady loads, messages/s")
    p.add_argument("--seconds", type=float, default=10.0, help="duration of each steady load")
    p.add_argument("--companies", type=int, default=4, help="companies (paired devices)")
    p.add_argument("--q-workers", type=int, default=None, help="job cluster workers")
    p.add_argument("--timeout", type=float, default=600.0, help="give up waiting after")
    p.add_argument(
        "--profile",
        action="store_true",
        help="print the CPU seconds each process (and its children) used in each phase",
    )
    args = p.parse_args()
    if args.q_workers:
        os.environ["Q_WORKERS"] = str(args.q_workers)
    label = configure(args.db, args.broker, debug=False)

    from _procs import Child, child_env, percentile
    from _simulator import Simulator
    from _workers import counts, make_companies, start_worker, wait_registered, worker_env
    from django.conf import settings
    from django.core.management import call_command

    from whatsapp.models import AutoReplyRule, InboundMessage, ProcessingJob

    ids = make_companies(args.companies, "e2e")
    for company_id in ids:
        AutoReplyRule.objects.create(
            company_id=company_id, match="any", reply_text="re {name}", priority=1
        )
    with open(os.devnull, "w") as quiet:
        call_command("setup_defaults", stdout=quiet)
    log_dir = tempfile.mkdtemp(prefix="aiadmin-bench-e2e-")
    sim = worker = cluster = None
    sent = {}  # push name -> time the phones sent it (wall clock)
    serial = iter(range(10**9))
    cpu_use = []  # (phase, {process: CPU seconds})

    def send(count):
        """`count` messages spread over the companies, one POST per company."""
        per = {}
        now = time.time()
        for _ in range(count):
            i = next(serial)
            per.setdefault(ids[i % len(ids)], []).append(
                {"from": f"+4917{1000000 + i:07d}", "text": f"hello {i}", "push_name": f"m{i}"}
            )
            sent[f"m{i}"] = now
        for company_id, items in per.items():
            sim_post("messages", company=company_id, messages=items)

    def sim_post(action, **body):
        request = urllib.request.Request(
            f"http://127.0.0.1:{sim.port}/control/{action}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def acked():
        """push name -> time the simulator acknowledged its reply."""
        out = {}
        for company_id in ids:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{sim.port}/sends?company={company_id}", timeout=30
            ) as response:
                for row in json.load(response)["sends"]:
                    out[row["text"].removeprefix("re ")] = row["at"]
        return out

    def answered():
        return sim.stats()["totals"].get("sends", 0)

    def wait(predicate, what):
        deadline = time.monotonic() + args.timeout
        while not predicate():
            for child in (worker, cluster):
                if child is not None and not child.alive():
                    raise SystemExit(
                        f"{child.name} exited while waiting for {what}:\n{child.tail()}"
                    )
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}")
            time.sleep(0.05)
        return time.time()

    try:
        sim = Simulator(log_dir, f"{log_dir}/store")
        sim.provision(ids)
        sim.start()
        env = worker_env("simulator", f"{log_dir}/store", **sim.worker_settings())
        worker = start_worker("e2e", env, log_dir)
        wait_registered("e2e", worker)
        wait(lambda: counts("e2e")["connected"] == len(ids), "every session connected")

        # Phase 1: the inbound-only rate, then the backlog drained end to end.
        t0 = time.time()
        send(args.n)
        t_stored = wait(lambda: InboundMessage.objects.count() >= args.n, "the burst stored")
        inbound_rate = args.n / (t_stored - t0)
        cpu_before = cpu_of(sim.child, worker)
        cluster = Child("runcluster", ["runcluster"], child_env(), log_dir)
        wait(lambda: answered() >= args.n, "every reply of the burst acked")
        cpu_use.append(
            (f"burst of {args.n} drained", cpu_delta(cpu_before, sim.child, worker, cluster))
        )
        # From the first reply to the last: the cluster's start-up is not counted.
        burst = sorted(acked().values())
        drain_rate = (len(burst) - 1) / (burst[-1] - burst[0])
        done = sorted(ProcessingJob.objects.values_list("finished_at", flat=True))
        job_rate = (len(done) - 1) / (done[-1] - done[0]).total_seconds()

        # Phase 2: steady loads.
        steady = []
        for rate in [float(r) for r in args.rates.split(",") if r]:
            first = next(serial)  # a gap in the numbering marks the load's start
            cpu_before = cpu_of(sim.child, worker, cluster)
            base = answered()
            tick = 0.1
            total = int(rate * args.seconds)
            began = time.monotonic()
            t_start = time.time()
            done = 0
            k = 0
            while done < total:
                k += 1
                due = min(total, round(rate * tick * k))
                if due > done:
                    send(due - done)
                    done = due
                delay = began + tick * k - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            t_end = wait(lambda b=base, t=total: answered() >= b + t, f"the {rate:g}/s replies")
            cpu_use.append((f"{rate:g}/s", cpu_delta(cpu_before, sim.child, worker, cluster)))
            replies = acked()
            names = [f"m{i}" for i in range(first + 1, first + 1 + total)]
            latencies = [(replies[n] - sent[n]) * 1000 for n in names if n in replies]
            stages = stage_times(names, sent, replies)
            steady.append(
                (rate, total, len(latencies), total / (t_end - t_start), latencies, stages)
            )
    finally:
        for child in (cluster, worker):
            if child is not None:
                child.stop()
        if sim is not None:
            sim.stop()

    conf = settings.Q_CLUSTER
    print(f"machine: {machine()}")
    print(
        f"database: {label}; job cluster workers: {conf['workers']}; "
        f"companies: {len(ids)}; handler: keyword rule (default handler)"
    )
    print(f"burst of {args.n}: inbound only (stored)      {inbound_rate:8.1f} msg/s")
    print(f"burst of {args.n}: job stage (jobs finished)  {job_rate:8.1f} msg/s")
    print(f"burst of {args.n}: end to end (replies acked) {drain_rate:8.1f} msg/s")
    print(f"end to end / inbound only: {drain_rate / inbound_rate:.2f}")
    print("steady load   sent  answered   answered/s   p50 ms   p99 ms   max ms")
    for rate, total, got, achieved, lat, _stages in steady:
        print(
            f"{rate:8.0f}/s {total:6d} {got:9d} {achieved:12.1f} {percentile(lat, 50):8.1f} "
            f"{percentile(lat, 99):8.1f} {max(lat) if lat else float('nan'):8.1f}"
        )
    print("p50 / p99 ms of each stage: sent -> stored | stored -> job done | job done -> acked")
    for rate, *_rest, stages in steady:
        print(
            f"{rate:8.0f}/s "
            + " | ".join(f"{percentile(v, 50):7.1f} / {percentile(v, 99):7.1f}" for v in stages)
        )
    if args.profile:
        print("CPU seconds per process (with its children) in each phase:")
        for phase, use in cpu_use:
            wall = use.pop("wall")
            print(
                f"  {phase} ({wall:.1f} s wall): "
                + ", ".join(f"{name} {secs:.1f}" for name, secs in use.items())
            )


def cpu_of(*children):
    """name -> CPU seconds used so far by each child and its descendants (and this process)."""
    import psutil

    out = {"_t": time.time(), "bench (this process)": sum(psutil.Process().cpu_times()[:2])}
    for child in children:
        try:
            proc = psutil.Process(child.pid)
            total = sum(proc.cpu_times()[:2])
            for sub in proc.children(recursive=True):
                try:
                    total += sum(sub.cpu_times()[:2])
                except psutil.Error:
                    pass
        except psutil.Error:
            continue
        out[child.name] = total
    return out


def cpu_delta(before, *children):
    """CPU seconds used since `before` (children started since count from 0); the
    wall time is added as "wall"."""
    now = cpu_of(*children)
    out = {name: now[name] - before.get(name, 0.0) for name in now if name != "_t"}
    out["wall"] = now["_t"] - before["_t"]
    return out


def stage_times(names, sent, replies):
    """Per message (ms): phone send -> stored, stored -> job finished, job
    finished -> reply acked by the simulator."""
    from whatsapp.models import ProcessingJob

    rows = ProcessingJob.objects.filter(message__push_name__in=names).values_list(
        "message__push_name", "message__received_at", "finished_at"
    )
    stored, job, reply = [], [], []
    for name, received, finished in rows:
        if finished is None or name not in replies:
            continue
        stored.append((received.timestamp() - sent[name]) * 1000)
        job.append((finished - received).total_seconds() * 1000)
        reply.append((replies[name] - finished.timestamp()) * 1000)
    return stored, job, reply


if __name__ == "__main__":
    main()
