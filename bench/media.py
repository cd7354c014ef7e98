"""Media throughput of one worker: downloads/s of 1 MB images from the simulator,
and the worker's RSS while it downloads N at once.

A real `manage.py runworker whatsapp` (through bench/_lag_worker.py) owns one
company whose device is paired in advance on the real WhatsApp simulator
(`manage.py whatsapp_simulator`). The simulator is told to deliver N image
messages of --size bytes in one burst; the worker stores each message, then
downloads its image (WHATSAPP_MEDIA DOWNLOAD_CONCURRENCY at a time, default 4),
hashes it, checks its type with libmagic and stores it in the media storage
(the filesystem under the benchmark's var directory). Printed: time from the
burst until every message is stored, until every media row is `stored`,
downloads/s, and worker RSS (baseline, peak while downloading, growth per file).
Run it with --size 1048576 and --size 8388608: memory must not grow with the
file size (the files are streamed to disk, never held whole).

    .venv/bin/python bench/media.py -n 100
    .venv/bin/python bench/media.py -n 100 --size 8388608
    .venv/bin/python bench/media.py -n 100 --db postgres --broker redis
"""

import json
import tempfile
import time
import urllib.request

from _setup import configure, machine, parser


def main():
    p = parser(__doc__)
    p.add_argument("-n", type=int, default=100, help="images (default 100)")
    p.add_argument("--size", type=int, default=1024 * 1024, help="bytes per image (1 MiB)")
    p.add_argument("--concurrency", type=int, default=4, help="MEDIA_DOWNLOAD_CONCURRENCY")
    p.add_argument("--timeout", type=float, default=600.0)
    args = p.parse_args()
    label = configure(args.db, args.broker, debug=False)

    from _simulator import Simulator
    from _workers import (
        RssSampler,
        counts,
        make_companies,
        start_worker,
        wait_registered,
        wake,
        want_running,
        worker_env,
    )
    from django.db.models import Count

    from whatsapp.models import InboundMessage, MessageMedia

    log_dir = tempfile.mkdtemp(prefix="aiadmin-bench-media-")
    (company_id,) = make_companies(1, "media", running=False)
    sim = worker = rss = None
    try:
        sim = Simulator(log_dir, f"{log_dir}/store")
        sim.provision([company_id])
        sim.start()
        env = worker_env(
            "simulator",
            f"{log_dir}/store",
            MEDIA_DOWNLOAD_CONCURRENCY=args.concurrency,
            MEDIA_MAX_BYTES=json.dumps({"image": max(args.size, 5 * 1024 * 1024)}),
            **sim.worker_settings(),
        )
        worker = start_worker("media", env, log_dir)
        wait_registered("media", worker)
        rss = RssSampler(worker.pid)
        rss.start()
        want_running("media")
        wake("media")
        deadline = time.monotonic() + 120
        while counts("media")["connected"] < 1:
            if time.monotonic() > deadline or not worker.alive():
                raise SystemExit(f"the session never connected:\n{worker.tail()}")
            time.sleep(0.2)
        time.sleep(3)
        base_end = time.time()
        baseline = rss.median_rss(base_end - 2, base_end)

        body = {
            "company": str(company_id),
            "messages": [
                {"from": f"49151{i:08d}", "text": f"photo {i}", "kind": "image",
                 "media": {"size": args.size}}
                for i in range(args.n)
            ],
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{sim.port}/control/messages",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        t0 = time.time()
        urllib.request.urlopen(request, timeout=120).read()
        stored_at = done_at = None
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline and worker.alive():
            if stored_at is None and InboundMessage.objects.count() >= args.n:
                stored_at = time.time()
            final = MessageMedia.objects.filter(state__in=MessageMedia.FINAL).count()
            if final >= args.n:
                done_at = time.time()
                break
            time.sleep(0.1)
        states = dict(
            MessageMedia.objects.values_list("state").annotate(n=Count("pk")).values_list(
                "state", "n"
            )
        )
        peak, _threads = rss.peak(t0, time.time())
    finally:
        if rss:
            rss.stop()
        if worker:
            worker.stop()
        if sim:
            sim.stop()

    mib = 1024 * 1024
    print(f"machine: {machine()}; {label}; load average {open('/proc/loadavg').read()[:14]}")
    print(f"{args.n} images of {args.size / mib:.1f} MiB, download concurrency {args.concurrency}")
    if stored_at:
        print(f"all messages stored:  {stored_at - t0:.2f} s after the burst")
    if done_at:
        elapsed = done_at - t0
        print(f"all media final:      {elapsed:.2f} s  ->  {args.n / elapsed:.1f} downloads/s, "
              f"{args.n * args.size / mib / elapsed:.1f} MiB/s")
    else:
        print("media not all final before the timeout")
    print(f"states: {states}")
    print(f"worker RSS: baseline {baseline:.1f} MiB, peak while downloading "
          f"{peak:.1f} MiB (+{peak - baseline:.1f} MiB)")


if __name__ == "__main__":
    main()
