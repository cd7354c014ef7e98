"""Real processes for end-to-end tests: the WhatsApp simulator, session workers
(`runworker whatsapp`), the job cluster (`qcluster`) and the web server (daphne),
all started with the test database and the test's isolation environment.

    sim = Simulator(tmp_path).start()
    app = AppProcesses(tmp_path, sim)
    app.start_workers("w1", "w2"); app.start_qcluster()
    pair_companies(sim, company_ids, app)       # scan each QR the workers show
    sim.post("messages", company=company_id, **{"from": "+4915112345678"}, text="hi")
    ...
    app.stop_all(); sim.stop()

Everything a process prints goes to `<tmp_path>/<name>.log`; `logs()` returns
their tails for a failure message. Starting and stopping a process is
tests/process_harness.py's, shared with the benchmarks.
"""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from django.db import connection

from tests.process_harness import ROOT, Child, free_port, wait_for

__all__ = [
    "ROOT",
    "AppProcesses",
    "ControlError",
    "Simulator",
    "db_env",
    "free_port",
    "pair_companies",
    "wait_connected",
    "wait_for",
]


class ControlError(RuntimeError):
    def __init__(self, status, body):
        super().__init__(f"simulator answered {status}: {body}")
        self.status = status
        self.body = body


class Simulator:
    """`manage.py whatsapp_simulator` in a subprocess on a free loopback port."""

    def __init__(self, tmp_path, port=None, state_file=None, keepalive=20.0, extra_args=()):
        self.tmp = Path(tmp_path)
        self.port = port or free_port()
        self.state_file = state_file
        self.keepalive = keepalive
        self.extra_args = list(extra_args)
        self.child = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.url = f"ws://127.0.0.1:{self.port}"

    def start(self, timeout=30):
        args = [
            "whatsapp_simulator",
            "--port",
            str(self.port),
            "--keepalive",
            str(self.keepalive),
            *self.extra_args,
        ]
        if self.state_file:
            args += ["--state", str(self.state_file)]
        self.child = Child(
            f"simulator-{self.port}",
            args,
            dict(os.environ, PYTHONUNBUFFERED="1"),
            self.tmp,
            append=True,  # a restart on the same port adds to the log
        )

        def up():
            if not self.child.alive():
                raise AssertionError(
                    f"the simulator exited with {self.child.proc.returncode}:\n{self.log()}"
                )
            try:
                return self.get("stats")
            except (OSError, ControlError):
                return None

        wait_for(up, timeout, "the simulator to answer")
        return self

    def stop(self):
        if self.child is not None:
            self.child.stop(timeout=15)

    def log(self):
        return self.child.tail(4000) if self.child is not None else ""

    # --- the control API ---------------------------------------------------------
    def _request(self, method, path, body=None, timeout=30):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.base}/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise ControlError(exc.code, exc.read().decode(errors="replace")) from None

    def get(self, path, **query):
        query = {k: v for k, v in query.items() if v is not None}
        suffix = f"?{urllib.parse.urlencode(query)}" if query else ""
        return self._request("GET", f"{path}{suffix}")

    def post(self, action, **body):
        return self._request("POST", f"control/{action}", body)

    def stats(self):
        return self.get("stats")

    def company(self, company_id):
        """Counters of one company (all zero if the simulator never saw it)."""
        return self.stats()["companies"].get(str(company_id), {})

    def sends(self, company=None, phone=None):
        return self.get("sends", company=company, phone=phone)["sends"]


def db_env(tmp_path, **overrides):
    """The environment for app processes: the test database, isolated var dir."""
    env = dict(os.environ)
    db = connection.settings_dict
    tmp = Path(tmp_path)
    if connection.vendor == "postgresql":
        user = db["USER"] or "postgres"
        auth = f"{user}:{db['PASSWORD']}@" if db["PASSWORD"] else f"{user}@"
        env["DATABASE_URL"] = (
            f"postgres://{auth}{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        )
    else:
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
        var = tmp / "var"
        var.mkdir(exist_ok=True)
        env["AIADMIN_VAR_DIR"] = str(var)  # its own SQLite channel layer file
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.settings",
            "WHATSAPP_STORE_DIR": str(tmp / "store"),
            "WHATSAPP_STORE_URL": "",
            "PYTHONUNBUFFERED": "1",
            "WHATSAPP_SWEEP_AFTER": "5",  # compressed like the lease TTL
        }
    )
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class AppProcesses:
    """runworker / qcluster / daphne processes on the test database.

    With a `simulator`, the workers use the simulator transport pointed at it."""

    def __init__(self, tmp_path, simulator=None, **env_overrides):
        self.tmp = Path(tmp_path)
        self.children = {}  # name -> process_harness.Child
        self.procs = {}  # name -> its Popen
        self.ids = {}  # worker name -> worker id
        extra = {}
        if simulator is not None:
            extra = {"WHATSAPP_TRANSPORT": "simulator", "WHATSAPP_SIMULATOR_URL": simulator.url}
        self.env = db_env(tmp_path, **{**extra, **env_overrides})
        if connection.vendor != "postgresql":
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--database", "channels", "-v0"],
                cwd=ROOT,
                env=self.env,
                check=True,
                timeout=120,
            )

    def _spawn(self, name, args, script="manage.py"):
        child = Child(name, args, self.env, self.tmp, script, own_group=True, append=True)
        self.children[name] = child
        self.procs[name] = child.proc
        return child.proc

    def start_workers(self, *names):
        for name in names:
            worker_id = f"{name}.{os.getpid()}"
            self._spawn(name, ["runworker", "whatsapp", "--worker-id", worker_id])
            self.ids[name] = worker_id

    def start_qcluster(self, name="qcluster"):
        # As scripts/run does: the recurring jobs (above all the sweeper, which
        # enqueues a job whose recorder died between commit and enqueue).
        subprocess.run(
            [sys.executable, "manage.py", "setup_defaults", "-v0"],
            cwd=ROOT,
            env=self.env,
            check=True,
            timeout=120,
            stdout=subprocess.DEVNULL,
        )
        # Both clusters (client messages, maintenance), as the Procfile runs them.
        return self._spawn(name, ["runcluster"])

    def start_turns(self, name="turns"):
        """The turn runner (turn handlers, reply deadlines), as the Procfile runs it."""
        return self._spawn(name, ["runturns"])

    def start_daphne(self, name="web", port=None):
        port = port or free_port()
        self._spawn(
            name,
            ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "aiadmin.asgi:application"],
            script=None,
        )
        return port

    def alive(self):
        return [n for n, p in self.procs.items() if p.poll() is None]

    def signal(self, name, signum, timeout=20):
        """Send `signum` and wait for the exit code (TimeoutExpired if it runs on)."""
        proc = self.procs[name]
        proc.send_signal(signum)
        return proc.wait(timeout=timeout)

    def timed_signal(self, name, signum, timeout=20):
        """`signal`, and how many seconds the process took to exit."""
        started = time.monotonic()
        code = self.signal(name, signum, timeout)
        return code, time.monotonic() - started

    def stop(self, name, timeout=15):
        """SIGTERM the process, wait for it, then kill whatever it left in its group."""
        return self.children[name].stop(timeout)

    def stop_all(self, at_once=False):
        """Stop every process, one after the other, or `at_once`: SIGTERM to all
        first, so they shut down (and hand over) at the same time."""
        if not at_once:
            for name in list(self.children):
                self.stop(name)
            return
        for child in self.children.values():
            child.signal(signal.SIGTERM)
        for child in self.children.values():
            child.finish(15)

    def logs(self, tail=3000):
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-tail:]}"
            for p in sorted(self.tmp.glob("*.log"))
        )


# --- session helpers on the test database ---------------------------------------
def wait_connected(company_ids, app, what="every company connected", timeout=60):
    """Wait until every company's session row says connected (the worker wrote it)."""
    from whatsapp.models import SessionState, WhatsAppSession

    rows = WhatsAppSession.objects.filter(company_id__in=company_ids)
    try:
        wait_for(
            lambda: rows.filter(state=SessionState.CONNECTED).count() == len(company_ids),
            timeout,
            what,
            interval=0.2,
        )
    except AssertionError:
        states = list(rows.values_list("company_id", "state", "last_error"))
        raise AssertionError(f"{what}: {states}\n{app.logs()}") from None


def pair_companies(sim, company_ids, app, timeout=60):
    """Scan the QR of every company as soon as its session row shows one, then wait
    until all are connected. The sessions must be started (wants running)."""
    from whatsapp.models import SessionState, WhatsAppSession

    scanned = set()
    deadline = time.monotonic() + timeout
    while len(scanned) < len(company_ids):
        waiting = WhatsAppSession.objects.filter(
            company_id__in=company_ids, state=SessionState.AWAITING_PAIRING
        ).values_list("company_id", flat=True)
        for company_id in waiting:
            if company_id not in scanned:
                sim.post("scan", company=company_id)
                scanned.add(company_id)
        if time.monotonic() > deadline:
            raise AssertionError(f"only {sorted(scanned)} showed a QR\n{app.logs()}")
        time.sleep(0.2)
    wait_connected(company_ids, app, "every company connected after pairing", timeout)
