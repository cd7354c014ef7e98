"""Settings for aiadmin, read from the environment (django-environ).

Two shapes, chosen by what the environment provides:

* Embedded default (nothing set): SQLite in WAL mode, the channels-lite SQLite
  channel layer and the django-q2 ORM broker. Nothing to install; for a laptop.
* Production: ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` (channels_redis).

Misconfiguration fails at import time with a message that says what to set.
"""

import os
import re
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from aiadmin.media_storage import media_storage

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local .env (scripts/local-env writes one on the first `scripts/run`): read by
# every process, manage.py included; variables already set in the environment win.
_env_file = Path(env.str("AIADMIN_ENV_FILE", default=str(BASE_DIR / ".env")))
if _env_file.exists():
    environ.Env.read_env(str(_env_file), overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)

_DEV_SECRET = "insecure-dev-only-key-never-use-in-production-aiadmin"
SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it (50+ random characters), or set "
            "DJANGO_DEBUG=1 for a local development run."
        )
    SECRET_KEY = _DEV_SECRET

ALLOWED_HOSTS = env.list(
    "DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"] if DEBUG else []
)
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS is empty. List the host names this site answers to, "
        "comma separated (e.g. DJANGO_ALLOWED_HOSTS=admin.example.com)."
    )
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

VAR_DIR = Path(env.str("AIADMIN_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)  # SQLite files, neonize stores, test artifacts

INSTALLED_APPS = [
    "daphne",
    # whatsapp comes before channels so its `runworker` (per-worker channel,
    # boot message) overrides the stock one.
    "whatsapp",
    "companies",
    "assistant",
    "aiadmin.admin_site.AiadminAdminConfig",  # django.contrib.admin with our site
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "channels_lite",
    "django_q",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI assets served locally, no CDN
    "axes",  # admin login lockouts (AXES_* below)
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files from daphne itself
    "aiadmin.api.no_store.NoStoreMiddleware",  # Cache-Control: no-store under /api/
    "aiadmin.null_bytes.RefuseNullBytesMiddleware",  # NUL in a URL or form: 400, not a 500
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: answers a locked-out login with 429
]

ROOT_URLCONF = "aiadmin.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "aiadmin.wsgi.application"
ASGI_APPLICATION = "aiadmin.asgi.application"

# --- Databases -------------------------------------------------------------
# The embedded default: SQLite in WAL mode with IMMEDIATE transactions and a
# busy timeout. Measured: rollback-journal mode lost django-q2 results with
# "database is locked" once web + runworker + qcluster shared one file.
_SQLITE_OPTIONS = {
    "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    "transaction_mode": "IMMEDIATE",
    "timeout": 30,
}

DATABASE_URL = env.str("DATABASE_URL", default="")
if DATABASE_URL:
    try:
        _default_db = env.db_url_config(DATABASE_URL)
    except Exception as exc:  # django-environ raises several types here
        raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
    _engine = _default_db.get("ENGINE") or ""
    if not _engine.endswith(("postgresql", "sqlite3")):
        _scheme = DATABASE_URL.split("://", 1)[0] if "://" in DATABASE_URL else "no scheme"
        raise ImproperlyConfigured(
            f"DATABASE_URL must be postgres://... (or sqlite:///...), not {_engine or _scheme!r}."
        )
    if _engine.endswith("sqlite3"):
        _default_db["OPTIONS"] = dict(_SQLITE_OPTIONS)
    else:
        _default_db.setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=0))
        _default_db.setdefault("CONN_HEALTH_CHECKS", True)
else:
    _default_db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(VAR_DIR / "aiadmin.sqlite3"),
        "OPTIONS": dict(_SQLITE_OPTIONS),
    }
if env.str("TEST_DATABASE_NAME", default="") and _default_db["ENGINE"].endswith("postgresql"):
    # Lets parallel test runs on one PostgreSQL server use distinct databases
    # (on SQLite, AIADMIN_VAR_DIR already separates them).
    _default_db["TEST"] = {"NAME": env.str("TEST_DATABASE_NAME")}
elif _default_db["ENGINE"].endswith("sqlite3"):
    # A file, not :memory:, so that real processes (runworker, qcluster) in
    # end-to-end tests see the same test database.
    _default_db["TEST"] = {"NAME": str(VAR_DIR / "test-aiadmin.sqlite3")}

DATABASES = {"default": _default_db}

# --- Channel layer ---------------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured("REDIS_URL must start with redis://, rediss:// or unix://")
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # socket_timeout above the 5 s BZPOPMIN window: redis-py's default
                # equal to the window makes an idle runworker crash.
                "hosts": [{"address": REDIS_URL, "socket_timeout": 10}],
                "capacity": 1000,
                "expiry": 60,
                "prefix": env.str("CHANNELS_PREFIX", default="aiadmin"),
            },
        }
    }
else:
    # channels-lite on its own SQLite file (alpha, single author: isolated so a
    # fault there cannot touch business data).
    DATABASES["channels"] = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(VAR_DIR / "channels.sqlite3"),
        "OPTIONS": {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "timeout": 30,
        },
        "TEST": {"NAME": str(VAR_DIR / "test-channels.sqlite3")},
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_lite.layers.core.SQLiteChannelLayer",
            "CONFIG": {
                "database": "channels",
                "polling_interval": env.float("CHANNELS_POLL_INTERVAL", default=0.05),
                "capacity": 1000,
                "expiry": 60,
            },
        }
    }
DATABASE_ROUTERS = ["channels_lite.router.ChannelsRouter"]

# --- Job queue (django-q2) -------------------------------------------------
# ORM broker (default): enqueue is part of the transaction that stores the
# message. Redis broker: enqueued on commit, with a sweeper for the crash window.
Q_BROKER = env.str("Q_BROKER", default="orm")
if Q_BROKER not in {"orm", "redis"}:
    raise ImproperlyConfigured("Q_BROKER must be 'orm' or 'redis'.")
if Q_BROKER == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("Q_BROKER=redis needs REDIS_URL.")
# The site's name: the queue of client messages, and the prefix (signing salt)
# every cluster of the site shares. `manage.py runcluster` starts the
# maintenance cluster with AIADMIN_Q_SITE=<site> Q_CLUSTER_NAME=<its name>,
# which is how django-q2 selects an entry of ALT_CLUSTERS (docs/processing.md).
Q_SITE = env.str("AIADMIN_Q_SITE", default="") or env.str("Q_CLUSTER_NAME", default="aiadmin")
Q_MAINTENANCE_CLUSTER = f"{Q_SITE}-maintenance"
_q_workers = env.int("Q_WORKERS", default=max(2, 2 * (os.cpu_count() or 1)))
Q_CLUSTER = {
    "name": Q_SITE,
    # Handlers wait on I/O (an AI call, a webhook): two per core by default.
    "workers": _q_workers,
    "timeout": 60,
    "retry": 90,  # must be above timeout
    "max_attempts": 3,  # 0 would retry forever
    # Our ProcessingJob rows are the record of every job: django-q2 keeps no
    # success rows (-1; with > 0 its single monitor locks and loads that many
    # rows on every result: 75 ms per save on PostgreSQL), only failures. A
    # failed task is acknowledged: the job row, not django-q2, decides retries.
    "save_limit": -1,
    "ack_failures": True,
    # Tasks a cluster holds off the broker (its local queue): few, so a
    # killed cluster loses few (the sweeper finds them) and a stop is quick.
    "queue_limit": 2 * _q_workers,
    # ORM broker: tasks taken per dequeue, in one statement (whatsapp/job_broker.py).
    "bulk": _q_workers,
    "recycle": env.int("Q_RECYCLE", default=2000),
    "catch_up": False,
    # ORM broker: an idle cluster looks for new tasks every `poll` seconds
    # (bench/latency.py measures what this costs in latency).
    "poll": env.float("Q_POLL", default=0.1),
    "label": "Jobs",
    # The maintenance queue (sweeper, alert checks, webhook dispatch): its own
    # cluster, so these never wait behind a backlog of client messages.
    "ALT_CLUSTERS": {
        Q_MAINTENANCE_CLUSTER: {
            "workers": env.int("Q_MAINTENANCE_WORKERS", default=2),
            "queue_limit": 4,
            "recycle": 500,
        },
    },
}
if Q_BROKER == "redis":
    Q_CLUSTER["redis"] = REDIS_URL
else:
    Q_CLUSTER["orm"] = "default"
    # django-q2's ORM broker with a one-statement enqueue (whatsapp/job_broker.py).
    Q_CLUSTER["broker_class"] = "whatsapp.job_broker.ORMBroker"

# --- Auth, i18n, static ----------------------------------------------------
# django-axes first: a locked-out login is refused before any password is checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# One date/time format everywhere ("2026-12-02 09:12:00 CET"): docs/admin.md.
FORMAT_MODULE_PATH = ["aiadmin.formats"]
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
# WhiteNoise serves static files from the daphne process (no separate web server needed);
# `collectstatic` fills STATIC_ROOT, and the finders fallback serves uncollected files too.
WHITENOISE_USE_FINDERS = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
    # Media of messages (docs/media.md): the filesystem under the var directory, or
    # MEDIA_STORAGE=s3 with MEDIA_S3_* for any S3-compatible store.
    "media": media_storage(os.environ, VAR_DIR),
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "admin:login"
# Messages wait in the session (the database), not in a cookie: Django's default cookie
# is signed but readable by whoever holds it, and a new API key is shown in a message.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

# --- Security (production) -------------------------------------------------
# Trusted reverse proxies in front of the web processes, each appending to
# X-Forwarded-For (aiadmin/client_address.py). 0: the TCP peer is the client and
# X-Forwarded-For is ignored. Behind one load balancer: 1. Per-address limits (failed
# API authentication, admin login lockouts) count the wrong address if this is wrong.
NUM_PROXIES = env.int("DJANGO_NUM_PROXIES", default=0)
if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=True)
    # Load balancers probe the health endpoint over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$"]
    SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
SECURE_CONTENT_TYPE_NOSNIFF = True

# Admin login lockouts (django-axes, database handler: shared by every web process).
# Locked per username AND address together: a flood from one address cannot lock the
# real user out from another (by username alone it could, for any known username),
# and one office address with a user mistyping does not lock out its colleagues (by
# address alone it would). A success before the limit forgets the failures. Lifted
# after the cool-off, or at once by an admin: Axes -> Access attempts, or
# `manage.py axes_reset` (axes_reset_username / axes_reset_ip for one).
AXES_FAILURE_LIMIT = env.int("ADMIN_LOGIN_FAILURE_LIMIT", default=5)
_cooloff = env.int("ADMIN_LOGIN_COOLOFF_MINUTES", default=30)
AXES_COOLOFF_TIME = timedelta(minutes=_cooloff) if _cooloff > 0 else None  # 0: admin resets
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_CLIENT_IP_CALLABLE = "aiadmin.client_address.client_address"
AXES_VERBOSE = False  # no start-up banner in every manage.py command; lockouts still log
X_FRAME_OPTIONS = "DENY"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"whatsmeow": {"level": "WARNING"}, "neonize": {"level": "WARNING"}},
}

# --- REST framework --------------------------------------------------------
def _api_rate(name, default):
    """A DRF rate like 600/min; anything else fails at start with a clear message."""
    value = env.str(name, default=default)
    if not re.fullmatch(r"[0-9]+/(s|sec|second|m|min|minute|h|hour|d|day)", value):
        raise ImproperlyConfigured(
            f"{name}={value!r} is not a rate: use requests/period, e.g. 600/min or 10/second."
        )
    return value


# Company API keys (`Authorization: Api-Key <key>`) or a staff login; tenant
# scoping in companies/api/tenancy.py; one JSON error shape (aiadmin/api/errors.py).
REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "aiadmin.api.schema.APIAutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "companies.api.authentication.CompanyAPIKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["companies.api.permissions.IsTenantCaller"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["aiadmin.api.parsers.LimitedJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["aiadmin.api.throttles.TenantRateThrottle"],
    # Per API key (per user for staff sessions). "send" is for sending messages.
    "DEFAULT_THROTTLE_RATES": {
        "api": _api_rate("API_RATE_LIMIT", "600/min"),
        "send": _api_rate("API_SEND_RATE_LIMIT", "60/min"),
    },
    "EXCEPTION_HANDLER": "aiadmin.api.errors.api_exception_handler",
    "NUM_PROXIES": NUM_PROXIES,  # the anonymous rate limit counts per aiadmin.client_address
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
# API throttle counters: in Redis when there is one, so every web process shares
# one budget per key; otherwise per process (local memory).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
if REDIS_URL:
    CACHES["api_throttle"] = {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CHANNELS_PREFIX", default="aiadmin") + ":throttle",
        "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
    }
else:
    CACHES["api_throttle"] = {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "api-throttle",
    }
# Failed authentication (aiadmin/api/auth_failures.py): wrong/revoked/expired keys and
# calls without credentials per client address; wrong secrets per API key, from any
# address (a right key keeps working). 429 with Retry-After over the limit.
API_AUTH_FAILURE_RATES = {
    "address": _api_rate("API_AUTH_FAILURE_RATE", "10/min"),
    "key": _api_rate("API_KEY_FAILURE_RATE", "10/min"),
}
# Largest API request body (DRF reads the stream itself, so Django's
# DATA_UPLOAD_MAX_MEMORY_SIZE does not apply to it): 413 above this.
API_MAX_BODY_BYTES = env.int("API_MAX_BODY_BYTES", default=128 * 1024)
# Deepest nesting of arrays/objects in a JSON body (400 beyond; no request needs more
# than a few levels, and Python's json parser recurses once per level).
API_MAX_JSON_DEPTH = env.int("API_MAX_JSON_DEPTH", default=32)
SPECTACULAR_SETTINGS = {
    "TITLE": "aiadmin API",
    "DESCRIPTION": "WhatsApp sessions and messages per company. Authenticate with a "
    "company API key (`Authorization: Api-Key <key>`, created in the admin) or a staff login.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Choice sets that share a field name with another (media kinds and states).
    "ENUM_NAME_OVERRIDES": {
        "MediaKindEnum": "whatsapp.transport.media.MEDIA_KIND_CHOICES",
        "MediaStateEnum": "whatsapp.models.media.MessageMedia.State",
        "MessageKindEnum": "whatsapp.transport.kinds.MessageKind",
        "SessionStateEnum": "whatsapp.models.sessions.SessionState",
    },
    "PATH_CONVERTER_OVERRIDES": {
        "id": {"type": "integer", "minimum": 0, "maximum": 999_999_999_999_999_999},
    },
}

# --- WhatsApp --------------------------------------------------------------
WHATSAPP = {
    # "neonize" (real WhatsApp) or "simulator" (the project's own stand-in).
    "TRANSPORT": env.str("WHATSAPP_TRANSPORT", default="neonize"),
    "SIMULATOR_URL": env.str("WHATSAPP_SIMULATOR_URL", default="ws://127.0.0.1:8765"),
    # neonize device-key store: one SQLite file per company under this folder,
    # or a postgres:// URL shared by all companies (production).
    "STORE_DIR": env.str("WHATSAPP_STORE_DIR", default=str(VAR_DIR / "wa-store")),
    # Workers on several machines need the shared postgres:// store to resume each
    # other's companies. Give it its own database (server): every neonize client
    # holds PostgreSQL connections of its own and never closes them (docs/worker.md),
    # which must not exhaust the app database's max_connections.
    "STORE_URL": env.str("WHATSAPP_STORE_URL", default=""),
    # On a postgres:// store: the server closes a store connection idle this many
    # seconds (idle_session_timeout, PostgreSQL 14+; 0 = never), which is what frees
    # the connections of stopped clients; and a worker runs at most this many
    # clients on the store (its connections: these plus the ones ended within
    # the timeout).
    "STORE_IDLE_TIMEOUT": env.float("WHATSAPP_STORE_IDLE_TIMEOUT", default=10.0),
    "STORE_MAX_CLIENTS": env.int("WHATSAPP_STORE_MAX_CLIENTS", default=100),
    # neonize clients in this many child processes of the worker (0: in the worker's
    # own): starts run in parallel across them and a Go fatal error ends one shard,
    # not the worker (docs/worker.md, "neonize shards").
    "NEONIZE_SHARDS": env.int("WHATSAPP_NEONIZE_SHARDS", default=0),
    "LEASE_TTL": env.float("WHATSAPP_LEASE_TTL", default=15.0),
    "RECONCILE_INTERVAL": env.float("WHATSAPP_RECONCILE_INTERVAL", default=5.0),
    # A worker checks this often whether another worker on its machine died
    # (SIGKILL, a crash) and frees its leases at once; 0 = wait for the TTL.
    "PEER_CHECK_INTERVAL": env.float("WHATSAPP_PEER_CHECK_INTERVAL", default=0.5),
    "WATCHDOG_SILENCE": env.float("WHATSAPP_WATCHDOG_SILENCE", default=180.0),
    "CONNECT_CONCURRENCY": env.int("WHATSAPP_CONNECT_CONCURRENCY", default=4),
    "BACKOFF_BASE": env.float("WHATSAPP_BACKOFF_BASE", default=2.0),
    "BACKOFF_CAP": env.float("WHATSAPP_BACKOFF_CAP", default=300.0),
    "REPLACED_BACKOFF": env.float("WHATSAPP_REPLACED_BACKOFF", default=600.0),
    "MAX_SESSIONS_PER_WORKER": env.int("WHATSAPP_MAX_SESSIONS_PER_WORKER", default=1000),
    # A worker process keeps its database connection this many seconds
    # (its database calls share one thread); 0 = a new connection per call.
    "WORKER_CONN_MAX_AGE": env.int("WHATSAPP_WORKER_CONN_MAX_AGE", default=60),
    # `runcluster`: each cluster process (worker, pusher, monitor) keeps its
    # database connection this many seconds (SQLite and PostgreSQL) instead of
    # opening one per task; 0 = a new connection per task (docs/processing.md).
    "JOB_CONN_MAX_AGE": env.int("WHATSAPP_JOB_CONN_MAX_AGE", default=60),
    "SEND_MAX_ATTEMPTS": env.int("WHATSAPP_SEND_MAX_ATTEMPTS", default=5),
    # Recipients given as phone numbers are looked up on WhatsApp before the first
    # send (is it on WhatsApp, under which JID); the answer is kept this many
    # seconds per company and number, a "not on WhatsApp" answer the second.
    "RECIPIENT_TTL": env.float("WHATSAPP_RECIPIENT_TTL", default=7 * 86400.0),
    "RECIPIENT_NEGATIVE_TTL": env.float("WHATSAPP_RECIPIENT_NEGATIVE_TTL", default=86400.0),
    # A hand-over (rebalancing, SIGTERM, a lost lease) lets a send in flight finish
    # this many seconds before it stops the client (at most half the shutdown budget).
    "SEND_HANDOVER_BUDGET": env.float("WHATSAPP_SEND_HANDOVER_BUDGET", default=5.0),
    # Group commit: a worker records at most this many waiting inbound messages
    # in one transaction (the ones that arrived while the previous commit ran).
    "INBOUND_BATCH": env.int("WHATSAPP_INBOUND_BATCH", default=100),
    # Default processing handler for inbound messages: a name of WHATSAPP_INBOUND_HANDLERS.
    "INBOUND_HANDLER": env.str("WHATSAPP_INBOUND_HANDLER", default="auto_reply"),
    "DEFAULT_COUNTRY": env.str("WHATSAPP_DEFAULT_COUNTRY", default=""),
    "MAX_TEXT_LENGTH": 4096,
    # A job not enqueued this long after its message was stored is re-enqueued.
    "SWEEP_AFTER": env.float("WHATSAPP_SWEEP_AFTER", default=30.0),
    # A handler failing with a transient error (anything but a permanent
    # HandlerError) is retried by the sweeper until it has run this many times.
    "JOB_MAX_ATTEMPTS": env.int("WHATSAPP_JOB_MAX_ATTEMPTS", default=3),
    # Seconds a running attempt holds its job (0: Q_CLUSTER timeout + 15, so a
    # live attempt, which django-q2 kills at the timeout, never loses it).
    "JOB_LEASE": env.float("WHATSAPP_JOB_LEASE", default=0.0),
    # A queued job whose task a cluster took this long ago (off the Redis list,
    # or locked in the ORM broker's table) and is still unclaimed was taken by a
    # cluster that died: it is put on the queue again (docs/processing.md).
    "LOST_TASK_AFTER": env.float("WHATSAPP_LOST_TASK_AFTER", default=10.0),
    # `runcluster` looks for stranded jobs (dead attempts, lost tasks, jobs never
    # pushed) every this many seconds; 0 = only the minute sweeper.
    "JOB_WATCH_INTERVAL": env.float("WHATSAPP_JOB_WATCH_INTERVAL", default=2.0),
    # Redis broker: a job stored but never pushed (its process died between the
    # commit and the push) is pushed by the job watch this many seconds later.
    "UNPUSHED_AFTER": env.float("WHATSAPP_UNPUSHED_AFTER", default=5.0),
    # Session worker (issue 3): a connect attempt that neither connects nor
    # shows a QR within this many seconds is failed and retried with backoff.
    "CONNECT_TIMEOUT": env.float("WHATSAPP_CONNECT_TIMEOUT", default=75.0),
    "STOP_TIMEOUT": env.float("WHATSAPP_STOP_TIMEOUT", default=15.0),
    # SIGTERM: a worker still running this long after the signal exits anyway.
    "SHUTDOWN_GRACE": env.float("WHATSAPP_SHUTDOWN_GRACE", default=10.0),
    # neonize leaves the device store open after every client (a file handle, or
    # a PostgreSQL connection): a worker re-executes itself after this many
    # ended clients. 0 = automatic (25 on a postgres store, 500 on SQLite files).
    "RECYCLE_AFTER_LEAKED": env.int("WHATSAPP_RECYCLE_AFTER_LEAKED", default=0),
    # Workers share sessions evenly; a worker over its fair share hands back
    # at most REBALANCE_BATCH sessions per reconcile round.
    "REBALANCE": env.bool("WHATSAPP_REBALANCE", default=True),
    "REBALANCE_BATCH": env.int("WHATSAPP_REBALANCE_BATCH", default=5),
    # Health (admin dashboard): a session is flapping with FLAP_RECONNECTS or more
    # reconnections within FLAP_WINDOW_MINUTES, and "down too long" when it wants to
    # run but has not been connected for DOWN_THRESHOLD_MINUTES.
    "FLAP_RECONNECTS": env.int("WHATSAPP_FLAP_RECONNECTS", default=5),
    "FLAP_WINDOW_MINUTES": env.int("WHATSAPP_FLAP_WINDOW_MINUTES", default=15),
    "DOWN_THRESHOLD_MINUTES": env.int("WHATSAPP_DOWN_THRESHOLD_MINUTES", default=10),
    # Admin pages poll for changes this often while their WebSocket is down.
    "ADMIN_POLL_SECONDS": env.float("WHATSAPP_ADMIN_POLL_SECONDS", default=5.0),
    # While live, a session page also asks every this often for what sends no hint
    # (a message arriving, a job finishing): one small indexed query per open page.
    "ADMIN_LIVE_TICK_SECONDS": env.float("WHATSAPP_ADMIN_LIVE_TICK_SECONDS", default=0.5),
}

# The inbound handlers a company may pick (Company.inbound_handler holds a name):
# name -> {"path": dotted path, "label": shown in the admin}. Only these paths are
# ever imported; `manage.py check` imports each. WHATSAPP_EXTRA_INBOUND_HANDLERS
# (JSON, same shape) adds or replaces entries, e.g. your own AI handler.
try:
    _extra_handlers = env.json("WHATSAPP_EXTRA_INBOUND_HANDLERS", default={})
except ValueError as exc:
    raise ImproperlyConfigured(f"WHATSAPP_EXTRA_INBOUND_HANDLERS is not valid JSON: {exc}") from exc
if not isinstance(_extra_handlers, dict):
    raise ImproperlyConfigured(
        'WHATSAPP_EXTRA_INBOUND_HANDLERS must be a JSON object: {"name": {"path": '
        '"dotted.path", "label": "text"}}.'
    )
WHATSAPP_INBOUND_HANDLERS = {
    "auto_reply": {"path": "whatsapp.handlers.auto_reply", "label": "Keyword auto-replies"},
    "webhook": {
        "path": "whatsapp.handlers.webhook_reply",
        "label": "Webhook (the company's message-handler endpoint answers)",
    },
    "none": {"path": "whatsapp.handlers.no_reply", "label": "No reply (store only)"},
    "assistant": {
        "path": "assistant.handler.assistant_reply",
        "label": "AI assistant (the company's model, configured under AI assistant)",
    },
    "assistant_turns": {
        "path": "assistant.handler.assistant_turn",
        "label": "AI assistant, one answer per turn (assistant pipeline)",
    },
    "keyword_turns": {
        "path": "whatsapp.handlers.keyword_turn",
        "label": "Keyword auto-replies, one answer per turn (assistant pipeline)",
    },
    "webhook_turns": {
        "path": "whatsapp.handlers.webhook_turn",
        "label": "Webhook with the conversation, one answer per turn (may answer later)",
    },
    **_extra_handlers,
}

# --- Turns: the assistant pipeline (docs/processing.md, "Turns") -------------
WHATSAPP_TURNS = {
    # Threads of the turn runner (manage.py runturns): turns handled at once.
    "WORKERS": env.int("TURN_WORKERS", default=32),
    # Seconds between the runner's looks for due turns.
    "POLL": env.float("TURN_POLL", default=0.1),
    # A running attempt holds its turn this long (beyond any handler timeout).
    "LEASE": env.float("TURN_LEASE", default=120.0),
    # Timeout of a handler that declares none (@turn_handler(timeout=...)).
    "HANDLER_TIMEOUT": env.float("TURN_HANDLER_TIMEOUT", default=20.0),
    "MAX_ATTEMPTS": env.int("TURN_MAX_ATTEMPTS", default=3),
    "RETRY_DELAY": env.float("TURN_RETRY_DELAY", default=2.0),
    # Messages of the thread a handler sees before its turn (both sides).
    "HISTORY": env.int("TURN_HISTORY", default=20),
    # Read marks and "typing..." through the owning worker (off: neither is sent).
    "HINTS": env.bool("TURN_HINTS", default=True),
    # Composing presence is sent again this often while the handler works.
    "PRESENCE_REFRESH": env.float("TURN_PRESENCE_REFRESH", default=8.0),
}

# --- Webhooks, alerts, metrics ---------------------------------------------
WHATSAPP_WEBHOOKS = {
    # Seconds per HTTP request of a delivery; must stay below Q_CLUSTER["timeout"].
    "TIMEOUT": env.float("WEBHOOK_TIMEOUT", default=10.0),
    # A delivery is dead-lettered after this many failed attempts (replay from the admin).
    "MAX_ATTEMPTS": env.int("WEBHOOK_MAX_ATTEMPTS", default=8),
    # Exponential backoff with full jitter between attempts: uniform in
    # [0, min(CAP, BASE * 2**(n-1))] seconds; the dispatcher runs every minute.
    "BACKOFF_BASE": env.float("WEBHOOK_BACKOFF_BASE", default=30.0),
    "BACKOFF_CAP": env.float("WEBHOOK_BACKOFF_CAP", default=3600.0),
    # Private, loopback, link-local (and other non-global) addresses are refused
    # as webhook targets unless this is set (a receiver on the same network).
    "ALLOW_PRIVATE": env.bool("WEBHOOK_ALLOW_PRIVATE", default=False),
    # The webhook_reply message handler waits this long for the reply.
    "HANDLER_TIMEOUT": env.float("WEBHOOK_HANDLER_TIMEOUT", default=20.0),
    # CA bundle (PEM path) verifying https targets; default: certifi's (as requests).
    "CA_BUNDLE": env.str("WEBHOOK_CA_BUNDLE", default=""),
    # Delivered and dead-lettered deliveries (with their attempts) are deleted after this.
    "RETENTION_DAYS": env.int("WEBHOOK_RETENTION_DAYS", default=30),
    # After a secret rotation the old secret keeps signing (alongside the new one)
    # this many seconds, so receivers switch without missing a request; 0 = at once.
    "SECRET_OVERLAP": env.float("WEBHOOK_SECRET_OVERLAP", default=86400.0),
}
# Media of messages (docs/media.md). Sizes in bytes; a kind missing here gets
# WhatsApp's own limit (whatsapp/transport/media.py WHATSAPP_LIMITS).
WHATSAPP_MEDIA = {
    # Received media larger than this (per kind, JSON {"image": 5242880, ...}) is not
    # downloaded: its state is too_large.
    "MAX_BYTES": env.json("MEDIA_MAX_BYTES", default={}),
    # Download attempts before a media's state is failed; backoff with full jitter.
    "DOWNLOAD_MAX_ATTEMPTS": env.int("MEDIA_DOWNLOAD_MAX_ATTEMPTS", default=5),
    "BACKOFF_BASE": env.float("MEDIA_BACKOFF_BASE", default=5.0),
    "BACKOFF_CAP": env.float("MEDIA_BACKOFF_CAP", default=600.0),
    # Downloads at once per worker process, and seconds one download may take.
    "DOWNLOAD_CONCURRENCY": env.int("MEDIA_DOWNLOAD_CONCURRENCY", default=4),
    "DOWNLOAD_TIMEOUT": env.float("MEDIA_DOWNLOAD_TIMEOUT", default=120.0),
    # How often a worker looks for due downloads besides the hint of a new message.
    "POLL_SECONDS": env.float("MEDIA_POLL_SECONDS", default=5.0),
    # Outbound media given as a URL: fetched under the webhooks' address rules
    # (WEBHOOK_ALLOW_PRIVATE), at most this many redirects, each checked again.
    "FETCH_TIMEOUT": env.float("MEDIA_FETCH_TIMEOUT", default=20.0),
    "FETCH_MAX_REDIRECTS": env.int("MEDIA_FETCH_MAX_REDIRECTS", default=3),
    # Where temporary files of downloads and uploads go (default: the var directory).
    "TEMP_DIR": env.str("MEDIA_TEMP_DIR", default=str(VAR_DIR / "media-tmp")),
}
WHATSAPP_ALERTS = {
    # A worker whose heartbeat is older than this while it still owns leases is dead.
    # (Connection-lost grace and flapping use WHATSAPP DOWN_THRESHOLD_MINUTES / FLAP_*.)
    "WORKER_STALE_SECONDS": env.float("ALERT_WORKER_STALE_SECONDS", default=60.0),
    # A worker found dead by another (its process gone: SIGKILL, a crash) is an
    # incident for this long, although its sessions were taken over at once.
    "WORKER_DIED_MINUTES": env.float("ALERT_WORKER_DIED_MINUTES", default=15.0),
    # Optional Slack-compatible incoming webhook ({"text": ...}) besides mail to ADMINS.
    "CHAT_WEBHOOK_URL": env.str("ALERT_CHAT_WEBHOOK_URL", default=""),
    "CHAT_TIMEOUT": env.float("ALERT_CHAT_TIMEOUT", default=10.0),
    # More sources of findings for the alert check (dotted paths of functions
    # now -> [Finding]), e.g. the AI assistant's budget and failures.
    "FINDING_SOURCES": ["assistant.alerts.assistant_findings"],
}
# Alerts go to ADMINS by mail: DJANGO_ADMINS=ops@example.com,oncall@example.com
ADMINS = [(email, email) for email in env.list("DJANGO_ADMINS", default=[])]
SERVER_EMAIL = env.str("DJANGO_SERVER_EMAIL", default="aiadmin@localhost")
# EMAIL_URL=smtp+tls://user:password@smtp.example.com:587 (default: print to the console).
vars().update(env.email_url("EMAIL_URL", default="consolemail://"))
# /metrics answers only requests with "Authorization: Bearer <METRICS_TOKEN>" when set.
# Without a token it is refused (403) unless METRICS_PUBLIC=1 (or DEBUG) opens it to
# anyone who can reach it; `check --deploy` warns then (whatsapp.W004).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
METRICS_PUBLIC = env.bool("METRICS_PUBLIC", default=False)
# More prometheus_client collectors /metrics registers (dotted paths of classes).
METRICS_EXTRA_COLLECTORS = ["assistant.metrics.AssistantCollector"]
# The chat page's "why" panel: callables (company_id, outbound rows) -> {outbound pk:
# [(label, value), ...]} saying what produced a reply (whatsapp does not import them).
WHATSAPP_CHAT_REPLY_EXPLAINERS = ["assistant.why.explain_replies"]

# --- The AI assistant (docs/assistant.md) -----------------------------------
# Fernet keys (comma-separated, newest first) encrypting the companies' model API
# keys: the first encrypts, all decrypt. Generate one with
#   python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"
# Empty: a key derived from DJANGO_SECRET_KEY (the deploy check assistant.W001 warns).
ASSISTANT_ENCRYPTION_KEYS = env.list("ASSISTANT_ENCRYPTION_KEYS", default=[])
ASSISTANT = {
    # Seconds from the start of a turn by which its reply must be ready (both
    # stages together); below Q_CLUSTER["timeout"], at which the job is killed.
    "REPLY_DEADLINE": env.float("ASSISTANT_REPLY_DEADLINE", default=45.0),
    # Model failures (errors, timeouts, refusals, invalid output) of one company
    # within FAILURE_WINDOW_MINUTES that open an "assistant failing" incident.
    "FAILURE_INCIDENT_THRESHOLD": env.int("ASSISTANT_FAILURE_INCIDENT_THRESHOLD", default=3),
    "FAILURE_WINDOW_MINUTES": env.float("ASSISTANT_FAILURE_WINDOW_MINUTES", default=15.0),
    # Model endpoints on private, loopback or link-local addresses (a local Ollama,
    # vLLM in the same network) are refused unless this is set: a company admin
    # could otherwise make the server send requests into the internal network.
    "ALLOW_PRIVATE_ENDPOINTS": env.bool("ASSISTANT_ALLOW_PRIVATE_ENDPOINTS", default=False),
}
