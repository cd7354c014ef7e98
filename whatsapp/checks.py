"""System checks for the WhatsApp configuration (run by `manage.py check`)."""

from django.conf import settings
from django.core.checks import Error, Warning, register
from django.utils.module_loading import import_string

TRANSPORTS = {"neonize", "simulator"}


@register()
def check_whatsapp_settings(app_configs, **kwargs):
    errors = []
    conf = settings.WHATSAPP
    if conf["TRANSPORT"] not in TRANSPORTS:
        errors.append(Error(
            f"WHATSAPP_TRANSPORT={conf['TRANSPORT']!r} is not one of {sorted(TRANSPORTS)}.",
            id="whatsapp.E001",
        ))
    if conf["TRANSPORT"] == "simulator" and not conf["SIMULATOR_URL"].startswith(
            ("ws://", "wss://")):
        errors.append(Error(
            f"WHATSAPP_SIMULATOR_URL={conf['SIMULATOR_URL']!r} must be a ws:// or wss:// URL.",
            id="whatsapp.E007",
        ))
    if conf["LEASE_TTL"] < 3:
        errors.append(Error("WHATSAPP_LEASE_TTL must be at least 3 seconds.", id="whatsapp.E002"))
    if conf["RECONCILE_INTERVAL"] >= conf["LEASE_TTL"]:
        errors.append(Error(
            "WHATSAPP_RECONCILE_INTERVAL must be below WHATSAPP_LEASE_TTL, or leases lapse "
            "between renewals.", id="whatsapp.E003",
        ))
    if not 0 <= conf.get("SEND_HANDOVER_BUDGET", 5.0) <= 60:
        errors.append(Error(
            "WHATSAPP_SEND_HANDOVER_BUDGET must be between 0 and 60 seconds (how long a "
            "hand-over lets a send in flight finish).", id="whatsapp.E008",
        ))
    if conf["CONNECT_CONCURRENCY"] < 1:
        errors.append(Error("WHATSAPP_CONNECT_CONCURRENCY must be >= 1.", id="whatsapp.E004"))
    errors.extend(check_inbound_handlers())
    if settings.Q_CLUSTER["timeout"] >= settings.Q_CLUSTER["retry"]:
        errors.append(Error("Q_CLUSTER timeout must be below retry.", id="whatsapp.E006"))
    if conf["JOB_LEASE"] and conf["JOB_LEASE"] <= settings.Q_CLUSTER["timeout"]:
        errors.append(Error(
            "WHATSAPP_JOB_LEASE must be above the Q_CLUSTER timeout (or 0 for timeout + 15 s): "
            "a live attempt would lose its job and the handler run twice.",
            id="whatsapp.E007",
        ))
    return errors


def check_inbound_handlers():
    """Every entry of the handler registry imports to a callable, and the default
    handler is one of them (only these paths are ever imported: see
    companies/inbound_handlers.py)."""
    errors = []
    registry = settings.WHATSAPP_INBOUND_HANDLERS
    for name, entry in registry.items():
        where = f"WHATSAPP_INBOUND_HANDLERS[{name!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not (
                isinstance(entry.get("label"), str)):
            errors.append(Error(
                f'{where} must be {{"path": "dotted.path", "label": "text"}}, not {entry!r}.',
                id="whatsapp.E008",
            ))
            continue
        if not 0 < len(name) <= 64:
            errors.append(Error(f"{where}: names are 1 to 64 characters.", id="whatsapp.E008"))
        try:
            handler = import_string(entry["path"])
        except ImportError as exc:
            errors.append(Error(
                f"{where} {entry['path']!r} cannot be imported: {exc}", id="whatsapp.E005",
            ))
            continue
        if not callable(handler):
            errors.append(Error(
                f"{where} {entry['path']!r} is not callable.", id="whatsapp.E005",
            ))
    default = settings.WHATSAPP["INBOUND_HANDLER"]
    if default not in registry:
        errors.append(Error(
            f"WHATSAPP_INBOUND_HANDLER={default!r} is not a name of WHATSAPP_INBOUND_HANDLERS "
            f"({', '.join(sorted(registry)) or 'empty'}).",
            hint="Name a registered handler (e.g. auto_reply); dotted paths are no longer "
            "accepted here: register them in WHATSAPP_EXTRA_INBOUND_HANDLERS.",
            id="whatsapp.E009",
        ))
    return errors


@register(deploy=True)
def check_production_services(app_configs, **kwargs):
    warnings = []
    if "channels_redis" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        warnings.append(Warning(
            "The embedded SQLite channel layer serves one machine only; set REDIS_URL.",
            id="whatsapp.W001",
        ))
    if settings.DATABASES["default"]["ENGINE"].endswith("sqlite3"):
        warnings.append(Warning(
            "SQLite is the embedded default; set DATABASE_URL to PostgreSQL in production.",
            id="whatsapp.W002",
        ))
    if settings.WHATSAPP["TRANSPORT"] == "simulator":
        warnings.append(Warning(
            "WHATSAPP_TRANSPORT=simulator: the workers talk to the WhatsApp simulator, not to "
            "WhatsApp; unset it (the default is neonize) in production.",
            id="whatsapp.W003",
        ))
    if not settings.METRICS_TOKEN and settings.METRICS_PUBLIC:
        warnings.append(Warning(
            "/metrics is open to anyone who can reach it (METRICS_PUBLIC=1 and no "
            "METRICS_TOKEN): it names every company and its message counts. Set METRICS_TOKEN.",
            id="whatsapp.W004",
        ))
    return warnings


@register()
def check_webhook_and_alert_settings(app_configs, **kwargs):
    errors = []
    hooks = settings.WHATSAPP_WEBHOOKS
    job_timeout = settings.Q_CLUSTER["timeout"]
    for name in ("TIMEOUT", "HANDLER_TIMEOUT"):
        if not 0 < hooks[name] < job_timeout:
            errors.append(Error(
                f"WEBHOOK_{name}={hooks[name]:g} must be above 0 and below the job timeout "
                f"({job_timeout} s), or jobs are killed mid-request.",
                id="whatsapp.E101",
            ))
    if hooks["MAX_ATTEMPTS"] < 1:
        errors.append(Error("WEBHOOK_MAX_ATTEMPTS must be >= 1.", id="whatsapp.E102"))
    if not 0 < hooks["BACKOFF_BASE"] <= hooks["BACKOFF_CAP"]:
        errors.append(Error(
            "WEBHOOK_BACKOFF_BASE must be above 0 and at most WEBHOOK_BACKOFF_CAP.",
            id="whatsapp.E103",
        ))
    if hooks["SECRET_OVERLAP"] < 0:
        errors.append(Error(
            "WEBHOOK_SECRET_OVERLAP must be >= 0 seconds (0: a rotated secret stops at once).",
            id="whatsapp.E105",
        ))
    chat = settings.WHATSAPP_ALERTS["CHAT_WEBHOOK_URL"]
    if chat and not chat.startswith(("https://", "http://")):
        errors.append(Error("ALERT_CHAT_WEBHOOK_URL must be an http(s) URL.", id="whatsapp.E104"))
    return errors
