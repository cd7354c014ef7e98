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
    if conf["CONNECT_CONCURRENCY"] < 1:
        errors.append(Error("WHATSAPP_CONNECT_CONCURRENCY must be >= 1.", id="whatsapp.E004"))
    try:
        import_string(conf["INBOUND_HANDLER"])
    except ImportError as exc:
        errors.append(Error(
            f"WHATSAPP_INBOUND_HANDLER {conf['INBOUND_HANDLER']!r} cannot be imported: {exc}",
            id="whatsapp.E005",
        ))
    if settings.Q_CLUSTER["timeout"] >= settings.Q_CLUSTER["retry"]:
        errors.append(Error("Q_CLUSTER timeout must be below retry.", id="whatsapp.E006"))
    if conf["JOB_LEASE"] and conf["JOB_LEASE"] <= settings.Q_CLUSTER["timeout"]:
        errors.append(Error(
            "WHATSAPP_JOB_LEASE must be above the Q_CLUSTER timeout (or 0 for timeout + 15 s): "
            "a live attempt would lose its job and the handler run twice.",
            id="whatsapp.E007",
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
    chat = settings.WHATSAPP_ALERTS["CHAT_WEBHOOK_URL"]
    if chat and not chat.startswith(("https://", "http://")):
        errors.append(Error("ALERT_CHAT_WEBHOOK_URL must be an http(s) URL.", id="whatsapp.E104"))
    return errors
