"""Shared set-up for benchmarks: a throw-away database of the chosen kind.

`--db sqlite` uses a fresh SQLite file (the embedded default); `--db postgres`
creates a fresh PostgreSQL database on BENCH_PG_URL and drops it afterwards.
Must be imported before Django settings are loaded.
"""

import argparse
import atexit
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PG_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/9")


def parser(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--broker", choices=["orm", "redis"], default="orm")
    return p


def configure(db, broker="orm", debug=True):
    """Point the environment at a fresh database and migrate it. Returns a label.

    `debug=False` measures as production runs: DEBUG off (with DEBUG on, Django
    records every query, and on SQLite runs extra queries to quote its parameters)."""
    var_dir = tempfile.mkdtemp(prefix="aiadmin-bench-")
    atexit.register(shutil.rmtree, var_dir, True)
    if not debug:
        os.environ.setdefault("DJANGO_SECRET_KEY", f"bench-{uuid.uuid4().hex}{uuid.uuid4().hex}")
        os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost")
    os.environ.update(
        DJANGO_SETTINGS_MODULE="aiadmin.settings",
        DJANGO_DEBUG="1" if debug else "0",
        AIADMIN_VAR_DIR=var_dir,
        Q_BROKER=broker,
        Q_CLUSTER_NAME=f"bench{uuid.uuid4().hex[:6]}",
        LOG_LEVEL="WARNING",
    )
    for key in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(key, None)
    if broker == "redis":
        os.environ["REDIS_URL"] = REDIS_URL
    if db == "postgres":
        import psycopg

        name = f"bench_{uuid.uuid4().hex[:10]}"
        admin = PG_URL.replace("postgres://", "postgresql://", 1)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        base = PG_URL.rsplit("/", 1)[0]
        os.environ["DATABASE_URL"] = f"{base}/{name}"

        def drop():
            from django.db import connections

            connections.close_all()
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        atexit.register(drop)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    if "channels" in __import__("django.conf").conf.settings.DATABASES:
        call_command("migrate", database="channels", verbosity=0)
    return f"{db} + {broker} broker"


def machine():
    import platform

    cpus = os.cpu_count()
    mem = ""
    try:
        with open("/proc/meminfo") as fh:
            mem = f", {int(fh.readline().split()[1]) // 1024 // 1024} GiB"
    except OSError:
        pass
    return f"{platform.machine()}, {cpus} cores{mem}, Python {platform.python_version()}"
