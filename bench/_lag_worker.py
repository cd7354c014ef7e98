"""`manage.py runworker whatsapp` with an event-loop lag probe (benchmarks only).

    BENCH_LAG_FILE=FILE python bench/_lag_worker.py runworker whatsapp [options]

Before handing over to manage.py it patches the session supervisor so that,
once the worker's loop runs, a probe task sleeps PERIOD seconds over and over
and appends `<unix time> <lag ms>` lines to FILE, where lag is how late the
loop woke it. The worker's code is otherwise untouched. The arguments are
left as they are, so a worker that re-executes itself (recycling) comes back
through this wrapper with its probe.
"""

import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PERIOD = 0.05


async def probe(path):
    with open(path, "a", buffering=1) as fh:
        while True:
            began = time.monotonic()
            await asyncio.sleep(PERIOD)
            lag = time.monotonic() - began - PERIOD
            fh.write(f"{time.time():.3f} {lag * 1000:.2f}\n")


def install(path):
    from whatsapp.worker.supervisor import SessionSupervisor

    original = SessionSupervisor.start
    tasks = []

    async def start(self):
        first = not self.started
        await original(self)
        if first and self.started:
            tasks.append(asyncio.get_running_loop().create_task(probe(path), name="lag-probe"))

    SessionSupervisor.start = start


def main():
    lag_file = os.environ["BENCH_LAG_FILE"]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aiadmin.settings")
    import django

    django.setup()
    install(lag_file)
    from django.core.management import execute_from_command_line

    execute_from_command_line([str(ROOT / "manage.py"), *sys.argv[1:]])


if __name__ == "__main__":
    main()
