"""neonize churn: N offline companies in ONE real worker, started and stopped for a while.

One real `manage.py runworker whatsapp` with the real neonize transport owns N
companies. These machines have no route to WhatsApp: every dial fails on DNS,
the worker stops the client and retries with backoff (capped at --backoff-cap
seconds), so the worker starts and stops neonize clients all the time; on top
of that, every second --flips random companies are stopped or started again
(desired state, as the API does). Printed:

* worker deaths (a Go `fatal error` kills the process; the goal is 0) and
  recycles (re-executions after WHATSAPP_RECYCLE_AFTER_LEAKED ended clients);
* connect attempts made (the sessions' failure counts) and companies tried;
* database connections (pg_stat_activity; PostgreSQL only): the app database
  and, with --store postgres, the device-store database, peak and last;
* worker RSS by quarter of the run (median MiB): flat means no growth beyond the
  recycle saw-tooth.

    .venv/bin/python bench/neonize_churn.py -n 1000 --duration 600
    .venv/bin/python bench/neonize_churn.py -n 1000 --duration 600 \
        --db postgres --broker redis --store postgres
    .venv/bin/python bench/neonize_churn.py -n 20 --duration 15      # smoke
"""

import random
import shutil
import signal
import tempfile
import threading
import time

from _setup import PG_URL, configure, machine, parser


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=1000, help="companies (default 1000)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of churn (default 60)")
    p.add_argument("--flips", type=int, default=5, help="companies stopped/started per second")
    p.add_argument("--backoff-cap", type=float, default=10.0, help="WHATSAPP_BACKOFF_CAP")
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    args = p.parse_args()
    label = configure(args.db, args.broker, debug=False)

    import psycopg
    from _workers import (
        RssSampler,
        counts,
        make_companies,
        start_worker,
        wait_registered,
        wake,
        worker_env,
    )
    from django.conf import settings
    from django.db.models import Sum

    from whatsapp.models import DesiredState, WhatsAppSession

    log_dir = tempfile.mkdtemp(prefix="aiadmin-bench-churn-")
    admin = PG_URL.replace("postgres://", "postgresql://", 1)
    extra = {
        "WHATSAPP_MAX_SESSIONS_PER_WORKER": max(args.n, 1000),
        "WHATSAPP_BACKOFF_CAP": args.backoff_cap,
    }
    store_db = None
    if args.store == "postgres":
        store_db = f"wastore_{int(time.time())}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{store_db}"')
        extra["WHATSAPP_STORE_URL"] = admin.rsplit("/", 1)[0] + f"/{store_db}"
        extra["WHATSAPP_STORE_MAX_CLIENTS"] = args.n  # the worker owns them all
    app_db = settings.DATABASES["default"]["NAME"] if args.db == "postgres" else None

    ids = make_companies(args.n, "c", running=True)
    conns = {"app": [], "store": []}
    done = threading.Event()

    def sample_connections():
        with psycopg.connect(admin, autocommit=True) as conn:
            while not done.is_set():
                for key, name in (("app", app_db), ("store", store_db)):
                    if name:
                        conns[key].append(
                            conn.execute(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name]
                            ).fetchone()[0]
                        )
                done.wait(1.0)

    sampler = threading.Thread(target=sample_connections, daemon=True)
    worker = rss = None
    deaths, flips, died_with = 0, 0, ""
    try:
        worker = start_worker("churn", worker_env("neonize", f"{log_dir}/store", **extra), log_dir)
        wait_registered("churn", worker)
        rss = RssSampler(worker.pid)
        rss.start()
        if app_db or store_db:
            sampler.start()
        wake("churn")
        rng = random.Random(1)
        t0 = time.time()
        while time.time() - t0 < args.duration:
            if not worker.alive():
                deaths += 1
                died_with = _fatal_line(worker)
                break
            chosen = rng.sample(ids, min(args.flips, len(ids)))
            for company_id in chosen:
                row = WhatsAppSession.objects.get(company_id=company_id)
                row.desired_state = (
                    DesiredState.STOPPED
                    if row.desired_state == DesiredState.RUNNING
                    else DesiredState.RUNNING
                )
                row.save(update_fields=["desired_state"])
                flips += 1
            if chosen:
                wake("churn")
            time.sleep(1.0)
        t_end = time.time()
        tried = counts("c")["tried"]
        attempts = (
            WhatsAppSession.objects.filter(company_id__in=ids).aggregate(
                n=Sum("connect_failure_count")
            )["n"]
            or 0
        )
        span = (t_end - t0) / 4
        quarters = [f"{rss.median_rss(t0 + q * span, t0 + (q + 1) * span):.0f}" for q in range(4)]
        recycles = worker.tail(10_000_000).count("re-executing")
        if worker.alive():
            worker.signal(signal.SIGTERM)
            worker.wait(30)
    finally:
        done.set()
        if rss:
            rss.stop()
        if worker:
            worker.stop()
        if store_db:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{store_db}" WITH (FORCE)')

    print(f"machine: {machine()}")
    print(
        f"database: {label}; transport: neonize (offline); store: {args.store}; "
        f"{args.n} companies in one worker; {t_end - t0:.0f} s of churn"
    )
    print(f"worker deaths: {deaths}" + (f" ({died_with})" if deaths else ""))
    print(f"recycles: {recycles}")
    print(f"connect attempts: {attempts}; companies tried: {tried} of {args.n}; flips: {flips}")
    for key in ("app", "store"):
        values = conns[key]
        if values:
            print(f"{key} database connections: peak {max(values)}, last {values[-1]}")
    print(f"worker RSS by quarter (median MiB): {' / '.join(quarters)}")
    if not deaths:
        shutil.rmtree(log_dir, ignore_errors=True)  # kept when the worker died
    else:
        print(f"worker log kept in {log_dir}")


def _fatal_line(worker):
    for line in worker.tail(200_000).splitlines():
        if line.startswith(("fatal error", "panic:", "Traceback", "Segmentation")):
            return line
    return "no reason in its log"


if __name__ == "__main__":
    main()
