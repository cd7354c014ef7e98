"""Sessions per worker: N company sessions in ONE `manage.py runworker whatsapp`.

A real worker process starts with one warm-up company (so the transport's
one-time cost -- neonize's Go runtime, or the simulator client -- is in the
baseline), then N companies that want to run are created at once and the
worker is woken. Printed:

* time until the worker owns all N leases, and until all N are connected
  (simulator) or have each made their first connect attempt (neonize);
  attempts are capped by WHATSAPP["CONNECT_CONCURRENCY"];
* RSS and threads: baseline, peak, and after --settle seconds; memory per
  session = (settled - baseline) / N;
* event-loop lag inside the worker (p50/p99/max, ms), from a probe task that
  sleeps 50 ms in a loop (bench/_lag_worker.py), during the connect phase and
  the settled phase.

    .venv/bin/python bench/sessions_per_worker.py --transport simulator -n 1000
    .venv/bin/python bench/sessions_per_worker.py --transport neonize -n 1000

--transport neonize uses the real neonize client. These machines have no
route to WhatsApp, so every dial fails on DNS within milliseconds; the worker
stops the client and retries with backoff: the figures are the cost of owning
N sessions that keep failing, not of N live connections.
"""

import shutil
import signal
import tempfile
import time

from _setup import configure, machine, parser


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=1000, help="sessions (default 1000)")
    p.add_argument("--transport", choices=["simulator", "neonize"], default="simulator")
    p.add_argument("--concurrency", type=int, default=4, help="CONNECT_CONCURRENCY (default 4)")
    p.add_argument("--settle", type=float, default=30.0, help="seconds measured after all are up")
    p.add_argument("--timeout", type=float, default=900.0, help="give up after (seconds)")
    args = p.parse_args()
    label = configure(args.db, args.broker, debug=False)

    from _procs import percentile
    from _workers import (
        RssSampler,
        counts,
        make_companies,
        read_lag,
        start_worker,
        wait_registered,
        wake,
        want_running,
        worker_env,
    )

    from whatsapp.models import SessionLease

    log_dir = tempfile.mkdtemp(prefix="aiadmin-bench-spw-")
    extra = {
        "WHATSAPP_CONNECT_CONCURRENCY": args.concurrency,
        "WHATSAPP_MAX_SESSIONS_PER_WORKER": max(args.n + 1, 1000),
    }
    warm_ids = make_companies(1, "warm", running=False)
    ids = make_companies(args.n, "s", running=False)
    ready_key = "connected" if args.transport == "simulator" else "tried"
    sim = worker = rss = None
    try:
        if args.transport == "simulator":
            from _simulator import Simulator

            sim = Simulator(log_dir, f"{log_dir}/store")
            sim.provision(warm_ids + ids)
            sim.start()
            extra.update(sim.worker_settings())
        env = worker_env(args.transport, f"{log_dir}/store", **extra)
        worker = start_worker("spw", env, log_dir)
        wait_registered("spw", worker)
        rss = RssSampler(worker.pid)
        rss.start()

        want_running("warm")
        wake("spw")
        if not _wait(lambda: counts("warm")[ready_key] == 1, 120, worker):
            raise SystemExit(f"the warm-up session never came up:\n{worker.tail()}")
        time.sleep(4)
        base_end = time.time()
        baseline = rss.median_rss(base_end - 3, base_end)
        base_threads = rss.samples[-1][2]

        t0 = time.time()
        want_running("s")
        wake("spw")
        reached = {}
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and worker.alive():
            now = counts("s", owner="spw")
            for key in ("owned", ready_key):
                if now[key] >= args.n and key not in reached:
                    reached[key] = time.time() - t0
            if ready_key in reached and "owned" in reached:
                break
            time.sleep(0.5)
        t_up = time.time()
        last = counts("s", owner="spw")
        if worker.alive():
            time.sleep(args.settle)
        t_end = time.time()
        settled = rss.median_rss(t_end - min(10, args.settle), t_end) if worker.alive() else 0.0
        peak_rss, peak_threads = rss.peak(t0, t_end)
        end_threads = rss.samples[-1][2]
        lag_up = read_lag(worker.lag_file, t0, t_up)
        lag_settled = read_lag(worker.lag_file, t_up, t_end)
        final = counts("s", owner="spw")

        died = None if worker.alive() else (worker.proc.returncode, _fatal_line(worker))
        began = time.monotonic()
        worker.signal(signal.SIGTERM)
        code = worker.wait(30)
        stop_seconds = time.monotonic() - began
        released = SessionLease.objects.filter(owner="").count()
    finally:
        if rss:
            rss.stop()
        if worker:
            worker.stop()
        if sim:
            sim.stop()

    def fmt(key):
        got = reached.get(key)
        return f"{got:.1f} s" if got is not None else f"not reached ({last[key]}/{args.n})"

    def lag(values):
        if not values:
            return "no samples"
        return (
            f"p50 {percentile(values, 50):.1f}  p99 {percentile(values, 99):.1f}  "
            f"max {max(values):.1f} ms  ({len(values)} samples)"
        )

    print(f"machine: {machine()}")
    if died:
        print(f"THE WORKER DIED during the run: exit code {died[0]}: {died[1]}")
        print(f"  (its log: {worker.log_path})")
    print(
        f"database: {label}; transport: {args.transport}; {args.n} sessions in one worker; "
        f"CONNECT_CONCURRENCY {args.concurrency}"
    )
    print(f"all owned:                 {fmt('owned')}")
    what = "connected" if ready_key == "connected" else "made a first connect attempt"
    print(f"all {what + ':':22s} {fmt(ready_key)}")
    print(f"after {args.settle:g} s settled: {final}")
    print(f"RSS baseline (1 session):  {baseline:7.1f} MiB, {base_threads} threads")
    print(f"RSS peak:                  {peak_rss:7.1f} MiB, {peak_threads} threads")
    if not died:
        print(f"RSS settled:               {settled:7.1f} MiB, {end_threads} threads")
        print(
            f"RSS per session:           {(settled - baseline) * 1024 / args.n:7.1f} KiB "
            f"(settled - baseline) / {args.n}"
        )
    print(f"event-loop lag, connecting: {lag(lag_up)}")
    print(f"event-loop lag, settled:    {lag(lag_settled)}")
    if not died:
        print(
            f"SIGTERM: exit code {code} after {stop_seconds:.1f} s; "
            f"{released} of {args.n + 1} leases released"
        )
        shutil.rmtree(log_dir, ignore_errors=True)  # kept when the worker died


def _fatal_line(worker):
    """The first line of the worker's log that says why it died."""
    for line in worker.tail(200_000).splitlines():
        if line.startswith(("fatal error", "panic:", "Traceback", "Segmentation")):
            return line
    return "no reason in its log"


def _wait(predicate, timeout, worker):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not worker.alive():
            return False
        if predicate():
            return True
        time.sleep(0.3)
    return False


if __name__ == "__main__":
    main()
