"""Failover: a worker owning N sessions dies (SIGKILL) or stops (SIGTERM).

Real `manage.py runworker whatsapp` processes, in three steps:

1. worker A starts alone and takes all N sessions (connected through the
   WhatsApp simulator, whose devices are paired in advance); standby worker B
   starts and owns nothing (rebalancing is off for this benchmark, so the
   sessions stay on A until A goes away);
2. A is SIGKILLed: B, on the same machine, sees A's process gone and frees
   A's leases at once (WHATSAPP_PEER_CHECK_INTERVAL; with --peer-check 0 they
   stay until they expire, WHATSAPP_LEASE_TTL, as for a worker on another
   machine), then B takes them. Measured: time until all N are owned by B,
   and until all N are connected again by B;
3. standby worker C starts, and B gets SIGTERM: B stops its clients,
   releases its leases at once and wakes C. Measured: the same two times
   (target: under 2 s), and how long B took to exit.

Times come from the workers' own ConnectionEvent rows (lease_acquired,
connected; `starting` for neonize), measured from the moment the signal was
sent. Defaults are the production settings: lease TTL 15 s, reconcile
interval 5 s, CONNECT_CONCURRENCY 4.

    .venv/bin/python bench/failover.py --transport simulator -n 200
    .venv/bin/python bench/failover.py --transport simulator -n 200 --db postgres --broker redis

With --transport neonize (offline: dials fail on DNS) "connected" becomes
"a client of the new owner started dialling".
"""

import shutil
import signal
import tempfile
import time
from datetime import UTC, datetime

from _setup import configure, machine, parser


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=200, help="sessions (default 200)")
    p.add_argument("--transport", choices=["simulator", "neonize"], default="simulator")
    p.add_argument("--ttl", type=float, default=15.0, help="WHATSAPP_LEASE_TTL (default 15)")
    p.add_argument("--interval", type=float, default=5.0, help="WHATSAPP_RECONCILE_INTERVAL")
    p.add_argument("--concurrency", type=int, default=4, help="CONNECT_CONCURRENCY (default 4)")
    p.add_argument(
        "--peer-check",
        type=float,
        default=0.5,
        help="WHATSAPP_PEER_CHECK_INTERVAL (default 0.5; 0 = wait for the dead worker's TTL)",
    )
    args = p.parse_args()
    label = configure(args.db, args.broker, debug=False)

    from _workers import (
        counts,
        make_companies,
        start_worker,
        wait_registered,
        wake,
        want_running,
        worker_env,
    )

    log_dir = tempfile.mkdtemp(prefix="aiadmin-bench-failover-")
    ids = make_companies(args.n, "f", running=False)
    ready_kind = "connected" if args.transport == "simulator" else "starting"
    extra = {
        "WHATSAPP_REBALANCE": "0",
        "WHATSAPP_LEASE_TTL": args.ttl,
        "WHATSAPP_RECONCILE_INTERVAL": args.interval,
        "WHATSAPP_CONNECT_CONCURRENCY": args.concurrency,
        "WHATSAPP_PEER_CHECK_INTERVAL": args.peer_check,
        "WHATSAPP_MAX_SESSIONS_PER_WORKER": max(1000, args.n),
    }
    sim = None
    workers = {}
    results = {}
    try:
        if args.transport == "simulator":
            from _simulator import Simulator

            sim = Simulator(log_dir, f"{log_dir}/store")
            sim.provision(ids)
            sim.start()
            extra.update(sim.worker_settings())
        env = worker_env(args.transport, f"{log_dir}/store", **extra)

        def start(name):
            workers[name] = start_worker(name, env, log_dir)
            wait_registered(name, workers[name])
            return workers[name]

        a = start("fo-a")
        t0 = time.time()
        want_running("f")
        wake("fo-a")
        ready_key = "connected" if ready_kind == "connected" else "tried"
        up = _poll(
            lambda: (c := counts("f", owner="fo-a"))["owned"] == args.n and c[ready_key] == args.n,
            timeout=300 + args.n,
            child=a,
        )
        if not up:
            raise SystemExit(f"worker A never had all sessions up:\n{a.tail()}")
        results["initial"] = time.time() - t0
        start("fo-b")
        time.sleep(args.interval + 1)  # B has run a round and found nothing free
        assert counts("f", owner="fo-b")["owned"] == 0, "standby B took sessions from A"

        results["kill"] = _measure(a, signal.SIGKILL, "fo-b", args, ready_kind, workers)
        start("fo-c")
        time.sleep(args.interval + 1)
        results["term"] = _measure(
            workers["fo-b"], signal.SIGTERM, "fo-c", args, ready_kind, workers
        )
    finally:
        for child in workers.values():
            child.stop()
        if sim:
            sim.stop()

    shutil.rmtree(log_dir, ignore_errors=True)
    ready = "connected" if ready_kind == "connected" else "dialling"
    print(f"machine: {machine()}")
    print(
        f"database: {label}; transport: {args.transport}; {args.n} sessions; lease TTL "
        f"{args.ttl:g} s, reconcile interval {args.interval:g} s, "
        f"CONNECT_CONCURRENCY {args.concurrency}, peer check every {args.peer_check:g} s"
    )
    print(f"initial: worker A had all {args.n} {ready} after {results['initial']:.1f} s")
    for key, title in [("kill", "SIGKILL of A -> B"), ("term", "SIGTERM of B -> C")]:
        r = results[key]
        print(
            f"{title}: first owned {_s(r['first_owned'])}, all owned {_s(r['all_owned'])}, "
            f"all {ready} {_s(r['all_ready'])}"
            + (f"; A's leases would expire at {_s(r['expired'])}" if key == "kill" else "")
            + (f"; old worker exited after {_s(r['exit'])}" if key == "term" else "")
        )
        for kind, what in [("stopped", "clients stopped"), ("lease_lost", "leases released")]:
            if kind in r["spans"]:
                first, last, n = r["spans"][kind]
                print(f"    old worker: {n} {what} between {first:.2f} s and {last:.2f} s")


def _s(value):
    return "never" if value is None else f"{value:.2f} s"


def _poll(predicate, timeout, child=None, interval=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child is not None and not child.alive():
            return False
        if predicate():
            return True
        time.sleep(interval)
    return False


def _measure(victim, signum, heir, args, ready_kind, workers):
    """Signal `victim`, then time how long until `heir` owns and runs every session."""
    from django.db.models import Count, Max, Min

    from whatsapp.models import ConnectionEvent, SessionLease

    expires = SessionLease.objects.filter(owner=victim.worker_id).aggregate(Max("expires_at"))
    sent = time.time()
    victim.signal(signum)
    exited = None
    if signum == signal.SIGTERM:
        code = victim.wait(30)
        exited = time.time() - sent if code is not None else None
    else:
        victim.wait(10)
    since = datetime.fromtimestamp(sent, UTC)

    def per_session(kind):
        return (
            ConnectionEvent.objects.filter(
                kind=kind,
                worker_id=heir,
                created_at__gte=since,
                session__company__slug__startswith="f-",
            )
            .values("session_id")
            .annotate(first=Min("created_at"))
            .values_list("first", flat=True)
        )

    limit = args.ttl + 4 * args.interval + 60 + args.n / 2
    _poll(lambda: len(per_session(ready_kind)) >= args.n, limit, workers[heir])
    owned = list(per_session("lease_acquired"))
    ready = list(per_session(ready_kind))

    def after(times, pick):
        if len(times) < args.n:
            return None
        return (pick(times) - since).total_seconds()

    last_expiry = expires["expires_at__max"]
    # What the victim recorded after the signal (SIGTERM), or what a worker
    # recorded in its name when it freed a dead victim's leases (SIGKILL).
    spans = {}
    for kind in ("stopped", "lease_lost"):
        rows = ConnectionEvent.objects.filter(
            kind=kind, worker_id=victim.worker_id, created_at__gte=since
        )
        if kind == "stopped":
            rows = rows.filter(reason__startswith="client ")  # "client N stopped: ..."
        got = rows.aggregate(first=Min("created_at"), last=Max("created_at"), n=Count("id"))
        if got["n"]:
            spans[kind] = (
                (got["first"] - since).total_seconds(),
                (got["last"] - since).total_seconds(),
                got["n"],
            )
    return {
        "spans": spans,
        "first_owned": (min(owned) - since).total_seconds() if owned else None,
        "all_owned": after(owned, max),
        "all_ready": after(ready, max),
        "expired": (last_expiry - since).total_seconds() if last_expiry else None,
        "exit": exited,
    }


if __name__ == "__main__":
    main()
