"""The WhatsApp simulator for the worker benchmarks, with devices already paired.

Every benchmark company gets a paired device before the simulator starts: a
credential in the simulator's state file and the same credential in the
company's store file under the worker's WHATSAPP_STORE_DIR (where the
simulator transport keeps it). A worker then resumes each session straight to
"connected", as after a restart in production; pairing is not measured.
"""

import json
import os
import secrets
import time
import urllib.request

from _procs import Child, child_env, free_port


class Simulator:
    def __init__(self, log_dir, store_dir):
        self.log_dir = log_dir
        self.store_dir = store_dir
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.state_file = os.path.join(log_dir, "simulator-state.json")
        self.credentials = []
        self.child = None

    def provision(self, company_ids):
        """A paired device for each company: simulator side and worker side."""
        os.makedirs(self.store_dir, exist_ok=True)
        for company_id in company_ids:
            token = secrets.token_urlsafe(24)
            phone = f"4915{int(company_id):09d}"
            jid = f"{phone}:2@s.whatsapp.net"
            self.credentials.append(
                {
                    "token": token,
                    "jid": jid,
                    "phone": phone,
                    "company": str(company_id),
                    "push_name": f"Bench {company_id}",
                    "banned_until": 0.0,
                    "ban_code": "",
                }
            )
            path = os.path.join(self.store_dir, f"company-{int(company_id)}.simulator.json")
            with open(path, "w") as fh:
                json.dump({"credential": token, "jid": jid, "simulator": self.url}, fh)

    def start(self):
        with open(self.state_file, "w") as fh:
            json.dump({"version": 1, "credentials": self.credentials}, fh)
        self.child = Child(
            "simulator",
            ["whatsapp_simulator", "--port", str(self.port), "--state", self.state_file],
            child_env(),
            self.log_dir,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.child.alive():
                raise SystemExit(f"the simulator exited:\n{self.child.tail()}")
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"the simulator did not answer:\n{self.child.tail()}")

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as resp:
            return json.load(resp)

    def worker_settings(self):
        return {"WHATSAPP_SIMULATOR_URL": self.url}

    def stop(self):
        if self.child is not None:
            self.child.stop()
