"""Django settings for batchboard, read from the environment (every variable is described in docs/configuration.md)."""

import base64
import ipaddress
import json
import os
import re
import tempfile
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.csp import CSP

BASE_DIR = Path(__file__).resolve().parent.parent


def _env(name, default=""):
    return os.environ.get(name, default).strip()


def _env_bool(name, default):
    raw = _env(name).lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be one of 1/0, true/false, yes/no, on/off; got {raw!r}.")


def _env_float(name, default, minimum, maximum):
    raw = _env(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number; got {raw!r}.") from None
    if not minimum <= value <= maximum:
        raise ImproperlyConfigured(f"{name} must be between {minimum:g} and {maximum:g}; got {raw!r}.")
    return value


def _env_int(name, default, minimum, maximum):
    raw = _env(name)
    if not raw:
        return default
    if not raw.isdigit() or not minimum <= int(raw) <= maximum:
        raise ImproperlyConfigured(f"{name} must be a whole number between {minimum:,} and {maximum:,}; got {raw!r}.")
    return int(raw)


def _env_choice(name, default, choices):
    raw = _env(name).lower()
    if not raw:
        return default
    if raw not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}; got {raw!r}.")
    return raw


def _env_webhook_secret(name):
    """A Standard Webhooks secret: `whsec_` and base64, or the name of the environment variable that holds one (so
    the secret itself can stay in a secrets manager's variable). Never echoed in an error."""
    raw = _env(name)
    if not raw:
        return ""
    value = raw
    if not raw.startswith("whsec_"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", raw):
            raise ImproperlyConfigured(f"{name} must be a secret starting with whsec_, or the name of a variable.")
        value = _env(raw)
        if not value:
            raise ImproperlyConfigured(f"{name} names the environment variable {raw}, which is not set.")
    try:
        key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
    except ValueError:
        key = b""
    if not value.startswith("whsec_") or not key:
        raise ImproperlyConfigured(f"The secret in {name} must be whsec_ followed by base64, as the API shows it.")
    return value


def _env_webhook_url(name, example):
    url = _env(name)
    if url and not re.fullmatch(r"https?://[^/\s]+/\S*", url):
        raise ImproperlyConfigured(f"{name} must be an http(s) URL such as {example}; got {url!r}.")
    return url


def _is_local_host(host):
    """Whether an ALLOWED_HOSTS entry names only this machine (so a public sandbox key exposes nothing)."""
    name = host.lower().strip("[]")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _env_url(name, default):
    raw = _env(name, default).rstrip("/")
    if not raw.startswith(("http://", "https://")) or raw[-3:] == "://":
        raise ImproperlyConfigured(f"{name} must be an http(s) URL such as {default}; got {raw!r}.")
    return raw


DEBUG = _env_bool("DJANGO_DEBUG", False)

# Importing the settings never writes anything: `manage.py ensure_secret_key` (run by `make run`) creates this file.
SECRET_KEY_FILE = BASE_DIR / "var" / "secret_key"
SECRET_KEY = _env("DJANGO_SECRET_KEY")
SECRET_KEY_IS_TEMPORARY = False
if not SECRET_KEY:
    if not DEBUG and _env_bool("DJANGO_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set.")
    if SECRET_KEY_FILE.exists():
        SECRET_KEY = SECRET_KEY_FILE.read_text().strip()
    else:
        # A key for this process only (a system check warns): sessions end when it restarts, and processes that do
        # not share it cannot read each other's sessions.
        from django.utils.crypto import get_random_string

        SECRET_KEY = get_random_string(64)
        SECRET_KEY_IS_TEMPORARY = True

ALLOWED_HOSTS = [h.strip() for h in _env("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("DJANGO_ALLOWED_HOSTS must name at least one host, e.g. 127.0.0.1,localhost.")
CSRF_TRUSTED_ORIGINS = [origin.strip() for origin in _env("DJANGO_CSRF_TRUSTED_ORIGINS").split(",") if origin.strip()]

# --- The upstream API -------------------------------------------------------
OPENAI_API_KEY = _env("OPENAI_API_KEY")
OPENAI_ORG_ID = _env("OPENAI_ORG_ID")
OPENAI_PROJECT_ID = _env("OPENAI_PROJECT_ID")
OPENAI_TIMEOUT = _env_float("OPENAI_TIMEOUT", 30.0, 1.0, 600.0)
OPENAI_MAX_RETRIES = int(_env_float("OPENAI_MAX_RETRIES", 2, 0, 10))


def _env_connections_file(name):
    """The connections file (one [[connection]] table per upstream account), checked here so that a mistake in it,
    or a key variable it names that is unset, stops startup with the file and the line. Kept as an absolute path,
    so that every process reads the same file whatever its working directory."""
    from batches.connection_file import ConnectionFileError, load

    path = _env(name)
    if not path:
        return ""
    try:
        load(path)
    except ConnectionFileError as exc:
        raise ImproperlyConfigured(f"{name} names a connections file that cannot be used: {exc}.") from None
    return str(Path(path).resolve())


# A TOML file of connections: batches.connection_file reads it, batches.configured_connections applies it to the
# database. Unset: the single-key settings' connection alone.
BATCHBOARD_CONNECTIONS = _env_connections_file("BATCHBOARD_CONNECTIONS")

# With neither a key nor a connections file the dashboard runs against its own simulated API (the sandbox app).
SANDBOX_MODE = not OPENAI_API_KEY and not BATCHBOARD_CONNECTIONS
# The sandbox API is served only in sandbox mode unless asked for (e.g. to try a client against it beside a real key),
# and on an install answering only on this machine whose connections file has no OPENAI_API_KEY beside it, so that
# the file may point at the sandbox (connections.example.toml does): its keys are public, but nobody else reaches it.
SANDBOX_ENABLED = _env_bool(
    "SANDBOX_ENABLED",
    SANDBOX_MODE or (not OPENAI_API_KEY and all(_is_local_host(host) for host in ALLOWED_HOSTS)),
)
# The sandbox's key is public and its views need no login: a deploy whose OPENAI_API_KEY went missing by mistake must
# not quietly serve it to the world.
_public_hosts = [host for host in ALLOWED_HOSTS if not _is_local_host(host)]
if SANDBOX_MODE and _public_hosts and not (SANDBOX_ENABLED and _env("SANDBOX_ENABLED")):
    raise ImproperlyConfigured(
        "OPENAI_API_KEY is not set, so batchboard would run in sandbox mode (a simulated API whose key, sk-sandbox, "
        f"is public), but DJANGO_ALLOWED_HOSTS names hosts that are not local ({', '.join(_public_hosts)}). "
        "Set OPENAI_API_KEY, or set SANDBOX_ENABLED=true to serve the sandbox on these hosts on purpose."
    )
SANDBOX_API_KEY = "sk-sandbox"
# A second, independent sandbox organisation (org-sandbox-second) under its own public key: its own batches and files,
# its own smaller demo seed, none of the first's visible to it (for trying several upstream connections offline).
SANDBOX_SECOND_API_KEY = "sk-sandbox-second"
# The ids each organisation gives new batches and files: "openai" (batch_..., file-...), or "gateway": long
# base64url strings like those of LiteLLM's managed files, to try the dashboard against a compatible gateway.
SANDBOX_ID_STYLES = ("openai", "gateway")
SANDBOX_ID_STYLE = _env_choice("SANDBOX_ID_STYLE", "openai", SANDBOX_ID_STYLES)
SANDBOX_SECOND_ID_STYLE = _env_choice("SANDBOX_SECOND_ID_STYLE", "openai", SANDBOX_ID_STYLES)
SANDBOX_URL = _env_url("SANDBOX_URL", "http://127.0.0.1:8000/sandbox/v1")
OPENAI_BASE_URL = SANDBOX_URL if SANDBOX_MODE else _env_url("OPENAI_BASE_URL", "https://api.openai.com/v1")

# Simulated seconds per real second; 60 finishes a small batch in about a minute.
SANDBOX_SPEED = _env_float("SANDBOX_SPEED", 60.0, 0.001, 1_000_000.0)
SANDBOX_FILES_DIR = Path(_env("SANDBOX_FILES_DIR", str(BASE_DIR / "var" / "sandbox-files")))
SANDBOX_STORAGE_QUOTA = int(_env_float("SANDBOX_STORAGE_QUOTA_MB", 1024, 1, 10_000_000) * 1024 * 1024)
SANDBOX_FILE_MAX_AGE = int(_env_float("SANDBOX_FILE_MAX_AGE_DAYS", 30, 0.01, 3650) * 86400)
SANDBOX_SEED = _env_bool("SANDBOX_SEED", True)
# Fault injection, for tests and demos of the dashboard's resilience.
SANDBOX_LATENCY = _env_float("SANDBOX_LATENCY", 0.0, 0.0, 60.0)
SANDBOX_ERROR_RATE = _env_float("SANDBOX_ERROR_RATE", 0.0, 0.0, 1.0)
SANDBOX_RATE_LIMIT_RATE = _env_float("SANDBOX_RATE_LIMIT_RATE", 0.0, 0.0, 1.0)
SANDBOX_RETRY_AFTER = _env_float("SANDBOX_RETRY_AFTER", 1.0, 0.0, 3600.0)
# Fraction of request lines a finished batch leaves out of both result files, to show and test "missing" lines.
SANDBOX_DROP_RATE = _env_float("SANDBOX_DROP_RATE", 0.0, 0.0, 1.0)

# The webhook receiver (/webhooks/openai/) verifies deliveries with this secret; unset, it answers 404.
BATCHBOARD_WEBHOOK_SECRET = _env_webhook_secret("BATCHBOARD_WEBHOOK_SECRET")
# Fernet keys (comma-separated, the first encrypts) for the secrets of connections made in the admin: batches.secrets.
# Unset, `manage.py ensure_secret_key` (run by `make run`) writes one to var/encryption_key, read from then on.
ENCRYPTION_KEY_FILE = BASE_DIR / "var" / "encryption_key"
BATCHBOARD_ENCRYPTION_KEY = _env("BATCHBOARD_ENCRYPTION_KEY") or (
    ENCRYPTION_KEY_FILE.read_text().strip() if ENCRYPTION_KEY_FILE.exists() else ""
)
# Each organisation of the sandbox signs its webhooks with its own secret and POSTs them to its own URL (unset: none
# sent): the first organisation's (key SANDBOX_API_KEY) with SANDBOX_WEBHOOK_*, the second's with
# SANDBOX_SECOND_WEBHOOK_*.
SANDBOX_WEBHOOK_URL = _env_webhook_url("SANDBOX_WEBHOOK_URL", "http://127.0.0.1:8000/webhooks/openai/")
SANDBOX_WEBHOOK_SECRET = _env_webhook_secret("SANDBOX_WEBHOOK_SECRET")
SANDBOX_SECOND_WEBHOOK_URL = _env_webhook_url(
    "SANDBOX_SECOND_WEBHOOK_URL", "http://127.0.0.1:8000/webhooks/openai/<connection slug>/"
)
SANDBOX_SECOND_WEBHOOK_SECRET = _env_webhook_secret("SANDBOX_SECOND_WEBHOOK_SECRET")
# Fault injection for the sandbox's webhooks: the share of deliveries sent twice, and the longest random delay (s).
SANDBOX_WEBHOOK_DUPLICATE_RATE = _env_float("SANDBOX_WEBHOOK_DUPLICATE_RATE", 0.0, 0.0, 1.0)
SANDBOX_WEBHOOK_MAX_DELAY = _env_float("SANDBOX_WEBHOOK_MAX_DELAY", 0.0, 0.0, 3600.0)

# --- Notifications (the notifications app) ----------------------------------
# The dashboard's own address as its users reach it: notifications link to batch pages under it.
BATCHBOARD_BASE_URL = _env_url("BATCHBOARD_BASE_URL", "http://127.0.0.1:8000")
# A destination that fails this many deliveries in a row is paused (a banner on the Notifications page says so).
BATCHBOARD_NOTIFY_PAUSE_AFTER = _env_int("BATCHBOARD_NOTIFY_PAUSE_AFTER", 5, 1, 1000)
# Tries per notification, and the wait after the first failure (doubled after each, at most an hour).
BATCHBOARD_NOTIFY_MAX_TRIES = _env_int("BATCHBOARD_NOTIFY_MAX_TRIES", 5, 1, 50)
BATCHBOARD_NOTIFY_RETRY_SECONDS = _env_float("BATCHBOARD_NOTIFY_RETRY_SECONDS", 30.0, 1.0, 3600.0)
# What a paused destination missed goes out as one summary when it is resumed, if it happened in the last this many
# hours; older events are marked not sent, with the reason, in the delivery log.
BATCHBOARD_NOTIFY_HELD_HOURS = _env_int("BATCHBOARD_NOTIFY_HELD_HOURS", 24, 0, 24 * 30)
# Delivery attempts the Notifications page's log shows.
BATCHBOARD_NOTIFY_LOG_LENGTH = _env_int("BATCHBOARD_NOTIFY_LOG_LENGTH", 50, 1, 1000)
# Plain email destinations go through Django's email (MAILERS): the SMTP server of EMAIL_HOST (EMAIL_PORT,
# EMAIL_HOST_USER, EMAIL_HOST_PASSWORD, EMAIL_USE_TLS); unset, Django's default (SMTP on localhost:25), except under
# `manage.py serve` (`make run`) on the sandbox, which prints them on its terminal (a destination to try without any
# service; production's `check --deploy` refuses that backend).
if _env("EMAIL_HOST"):
    MAILERS = {
        "default": {
            "BACKEND": "django.core.mail.backends.smtp.EmailBackend",
            "OPTIONS": {
                "host": _env("EMAIL_HOST"),
                "port": _env_int("EMAIL_PORT", 25, 1, 65535),
                "username": _env("EMAIL_HOST_USER"),
                "password": _env("EMAIL_HOST_PASSWORD"),
                "use_tls": _env_bool("EMAIL_USE_TLS", False),
                "timeout": 10,
            },
        }
    }
DEFAULT_FROM_EMAIL = _env("DEFAULT_FROM_EMAIL", "batchboard@localhost")

# How often the list is refreshed from upstream at most, whatever the number of viewers.
BATCHBOARD_REFRESH_INTERVAL = _env_float("BATCHBOARD_REFRESH_INTERVAL", 2.0, 0.0, 3600.0)
# How often the sync loop refreshes the list while nobody is watching it (keeping the history).
BATCHBOARD_HISTORY_INTERVAL = _env_float("BATCHBOARD_HISTORY_INTERVAL", 60.0, 1.0, 86_400.0)
# "Needs attention": a batch whose failed requests are more than this share of its requests (per cent), and a running
# batch with less than this many hours of its completion window left.
BATCHBOARD_ATTENTION_FAILURE_PERCENT = _env_float("BATCHBOARD_ATTENTION_FAILURE_PERCENT", 5.0, 0.0, 100.0)
BATCHBOARD_EXPIRING_SOON_HOURS = _env_float("BATCHBOARD_EXPIRING_SOON_HOURS", 3.0, 0.0, 24.0 * 7)
# Upstream calls per minute that every process together may make (the loop, detail pages, cancels, creates); a
# tenth of it is kept for cancels alone and a quarter for the sync loop (batches.budget).
BATCHBOARD_UPSTREAM_BUDGET = int(_env_float("BATCHBOARD_UPSTREAM_BUDGET", 120, 1, 1_000_000))
# Requests per minute one user may make that can call upstream (an unknown id, a download, a file's size...).
BATCHBOARD_USER_UPSTREAM_PER_MINUTE = int(_env_float("BATCHBOARD_USER_UPSTREAM_PER_MINUTE", 30, 1, 100_000))
# Batches one user may create or retry per minute (each costs two or three upstream calls).
BATCHBOARD_USER_CREATE_LIMIT = _env_int("BATCHBOARD_USER_CREATE_LIMIT", 10, 1, 100_000)
# The largest JSONL file the create page and the API's create take (bytes; default 1 GiB). A file over the Batch API's
# limits (50,000 requests, 200 MB) is split on line boundaries into several batches of one job; past this it is
# refused with 413 before it is read.
BATCHBOARD_MAX_UPLOAD_BYTES = _env_int("BATCHBOARD_MAX_UPLOAD_BYTES", 1024**3, 1024 * 1024, 100 * 1024**3)
# Requests one API token may make a minute (each token has its own count); more are answered 429 with Retry-After.
BATCHBOARD_API_TOKEN_PER_MINUTE = _env_int("BATCHBOARD_API_TOKEN_PER_MINUTE", 120, 1, 100_000)
# /metrics is served only to a bearer of this token; without one it is off (404).
BATCHBOARD_METRICS_TOKEN = _env("BATCHBOARD_METRICS_TOKEN")


def _env_price_file(name):
    """A price file that extends or overrides the shipped Batch prices, read once here so a bad one stops startup."""
    from batches.pricing import PriceFileError, load_price_file

    path = _env(name)
    if path:
        try:
            load_price_file(path)
        except PriceFileError as exc:
            raise ImproperlyConfigured(f"{name} must name a price file (see the README, Cost): {exc}.") from None
    return path


BATCHBOARD_PRICES = _env_price_file("BATCHBOARD_PRICES")


def _env_directory(name):
    path = _env(name)
    if path and not Path(path).is_dir():
        raise ImproperlyConfigured(f"{name} must name an existing directory; got {path!r}.")
    return path


# tiktoken's encoding files for the cost estimate on the create page (tiktoken's own variable and file naming).
# They are never downloaded: without them the estimate is made from the text's length, and says so.
TIKTOKEN_CACHE_DIR = _env_directory("TIKTOKEN_CACHE_DIR")


# Results kept locally (the results app): "new" keeps the files of batches that become final after the install (not
# the imported history) and of any batch whose results page someone opens; "all" also every batch of the history;
# "on-open" only what someone opens; "off" nothing. "final", the old default, is read as "all".
BATCHBOARD_ARCHIVE = _env("BATCHBOARD_ARCHIVE", "new").lower().replace("final", "all")
if BATCHBOARD_ARCHIVE not in ("new", "all", "on-open", "off"):
    raise ImproperlyConfigured(f"BATCHBOARD_ARCHIVE must be new, all, on-open or off; got {BATCHBOARD_ARCHIVE!r}.")
# A disk quota for the kept files, in GB (0: none): past it, the files opened least recently are evicted; their
# summaries and per-line index stay.
BATCHBOARD_ARCHIVE_MAX_GB = _env_float("BATCHBOARD_ARCHIVE_MAX_GB", 0.0, 0.0, 1_000_000.0)
# A result file larger than this is not kept (its results page says so and links to the API's copy), in MB.
BATCHBOARD_RESULT_FILE_MAX_MB = _env_int("BATCHBOARD_RESULT_FILE_MAX_MB", 1024, 1, 1024 * 1024)
# Read-only share links (the sharing app): off, no link can be made and every existing one answers "switched off".
BATCHBOARD_PUBLIC_LINKS = _env_bool("BATCHBOARD_PUBLIC_LINKS", True)


def _results_storage():
    """The storage the results app keeps files in: a folder under var/ unless a django-storages backend is named."""
    backend = _env("BATCHBOARD_RESULTS_STORAGE")
    if not backend:
        location = _env("BATCHBOARD_RESULTS_DIR", str(BASE_DIR / "var" / "results"))
        return {"BACKEND": "django.core.files.storage.FileSystemStorage", "OPTIONS": {"location": location}}
    raw_options = _env("BATCHBOARD_RESULTS_STORAGE_OPTIONS", "{}")
    try:
        options = json.loads(raw_options)
    except ValueError:
        options = None
    if not isinstance(options, dict):
        raise ImproperlyConfigured(
            'BATCHBOARD_RESULTS_STORAGE_OPTIONS must be a JSON object such as {"bucket_name": "results"}; '
            f"got {raw_options!r}."
        )
    return {"BACKEND": backend, "OPTIONS": options}


# --- Django -----------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "axes",
    "django_tasks_db",
    "audit",
    "batches",
    "results",
    "retries",
    "sharing",
    "webhooks",
    "notifications",
    "accounts",
    "api",
    "sandbox",
]

MIDDLEWARE = [
    "batches.request_log.RequestLogMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who changes an account, and from where, for the audit log's model signals.
    "audit.middleware.CurrentRequestMiddleware",
    # Before the body limit: an API create request names who may upload (api.middleware).
    "api.middleware.ApiMiddleware",
    # Before any view (and CsrfViewMiddleware's process_view) reads the body.
    "batches.middleware.RequestBodyLimitMiddleware",
    "batches.middleware.SessionLifetimeMiddleware",
    "batches.middleware.NoStoreForUsersMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "batches.middleware.HtmxLoginRedirectMiddleware",
    "batches.middleware.TimeZoneMiddleware",
    "batches.middleware.AmbiguousBatchMiddleware",
    # Last, as django-axes asks: it turns a lockout raised during login into the lockout answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "dashboard.urls"
WSGI_APPLICATION = "dashboard.wsgi.application"

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
                "django.template.context_processors.csp",
                "batches.context_processors.batchboard",
                "webhooks.context_processors.webhooks",
            ],
        },
    },
]

_default_db = f"sqlite:///{BASE_DIR / 'var' / 'batchboard.sqlite3'}"
try:
    DATABASES = {"default": dj_database_url.parse(_env("DATABASE_URL", _default_db), conn_max_age=60)}
except Exception as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        # IMMEDIATE makes read-then-write transactions (recording a snapshot) serialize instead of failing.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not Django's shared in-memory database, so a live test server's threads get real connections.
    # One per process, so parallel test runs never share (and destroy) each other's database.
    DATABASES["default"]["TEST"] = {"NAME": str(Path(tempfile.gettempdir()) / f"batchboard-test-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Background work (keeping results, automatic retries) runs as tasks of Django's task framework, queued in the
# project's own database: `manage.py db_worker` processes run them, on any machine that shares the database.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# Shared by every web worker and sync loop (rendered fragments, file sizes): Redis when configured, else a table in
# the database (created by `migrate`). Never per-process memory, which several workers could not agree on.
REDIS_URL = _env("REDIS_URL")
if REDIS_URL:
    if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"REDIS_URL must be a redis://, rediss:// or unix:// URL; got {REDIS_URL!r}.")
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "batchboard",
            # A Redis that stops answering fails a request within seconds instead of hanging a worker.
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.db.DatabaseCache", "LOCATION": "batchboard_cache"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 12}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    # First, so a locked-out (username, IP) pair is refused before its password is even checked.
    "axes.backends.AxesStandaloneBackend",
    # Then an address that failed too often, whatever the user names (password spraying).
    "audit.login_limit.AddressLimitBackend",
    # Passwords, unless BATCHBOARD_LOCAL_LOGIN is off (then only the break-glass user's).
    "accounts.backends.LocalPasswordBackend",
    # Single sign-on: answers only the provider's callback, and only when BATCHBOARD_OIDC_CLIENT_ID is set.
    "accounts.backends.OidcBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "batches:list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(_env("DJANGO_STATIC_ROOT", str(BASE_DIR / "var" / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "dashboard.storage.StaticFilesStorage"},
    "results": _results_storage(),
}
# Until `collectstatic` has written its manifest (a fresh clone under `manage.py runserver`), pages link the files
# under their plain names and whitenoise serves them from static/ directly.
WHITENOISE_USE_FINDERS = not (STATIC_ROOT / "staticfiles.json").exists()

# Uploads above this size stream to a temporary file instead of memory.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# --- Security ---------------------------------------------------------------
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "font-src": [CSP.SELF],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "form-action": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
}
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
# A session ends after this long without a request, and in any case this long after login.
SESSION_IDLE_SECONDS = _env_int("DJANGO_SESSION_IDLE_SECONDS", 8 * 3600, 60, 366 * 86400)
SESSION_MAX_SECONDS = _env_int("DJANGO_SESSION_MAX_SECONDS", 7 * 86400, 60, 366 * 86400)
SESSION_COOKIE_AGE = SESSION_MAX_SECONDS

# One switch for a deploy served over HTTPS (behind a TLS-terminating proxy).
HTTPS = _env_bool("DJANGO_HTTPS", False)
BEHIND_HTTPS_PROXY = _env_bool("DJANGO_BEHIND_HTTPS_PROXY", False)
SESSION_COOKIE_SECURE = _env_bool("DJANGO_SECURE_COOKIES", HTTPS)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
if HTTPS or BEHIND_HTTPS_PROXY:
    # The proxy terminates TLS and says so in X-Forwarded-Proto, so share links and redirects use https.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SILENCED_SYSTEM_CHECKS = []
if HTTPS:
    SECURE_HSTS_SECONDS = _env_int("DJANGO_HSTS_SECONDS", 365 * 86400, 0, 10 * 365 * 86400)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _env_bool("DJANGO_HSTS_PRELOAD", False)
    if not SECURE_HSTS_PRELOAD:
        # Joining the browsers' preload list is the domain owner's decision, made with DJANGO_HSTS_PRELOAD.
        SILENCED_SYSTEM_CHECKS.append("security.W021")
    SECURE_SSL_REDIRECT = _env_bool("DJANGO_SSL_REDIRECT", True)
    # Load balancers and process managers probe the web server directly, over plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    if not SECURE_SSL_REDIRECT:
        # DJANGO_SSL_REDIRECT=false says the proxy already redirects http to https.
        SILENCED_SYSTEM_CHECKS.append("security.W008")

# Login throttling (django-axes): a (username, IP) pair is locked out after this many failures, for the cool-off.
# Never by username alone, so nobody can lock a colleague out; the IP comes from the proxy only behind one.
AXES_FAILURE_LIMIT = _env_int("DJANGO_LOGIN_FAILURE_LIMIT", 5, 1, 1000)
AXES_COOLOFF_TIME = timedelta(minutes=_env_int("DJANGO_LOGIN_COOLOFF_MINUTES", 15, 1, 7 * 24 * 60))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "audit.client.client_ip"
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_SENSITIVE_PARAMETERS = ["password"]
# Single sign-on's callback is not a password login (accounts.backends.is_provider_callback says why).
AXES_WHITELIST_CALLABLE = "accounts.backends.is_provider_callback"
# Password spraying (one guess at each of many user names): an address is refused like a locked pair once it has
# failed this many logins in the last hour, whatever the names (audit.login_limit).
BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS = _env_int("BATCHBOARD_LOGIN_FAILURES_PER_ADDRESS", 50, 1, 1_000_000)

# Single sign-on through OpenID Connect (the accounts app; docs/configuration.md, "Single sign-on"). Off unless a
# client id is set. The endpoints come from the issuer's discovery document, fetched on first use and cached, unless
# they are given one by one.
BATCHBOARD_OIDC_CLIENT_ID = _env("BATCHBOARD_OIDC_CLIENT_ID")
BATCHBOARD_OIDC_ENABLED = bool(BATCHBOARD_OIDC_CLIENT_ID)
BATCHBOARD_OIDC_CLIENT_SECRET = _env("BATCHBOARD_OIDC_CLIENT_SECRET")
BATCHBOARD_OIDC_ISSUER = ""
if _env("BATCHBOARD_OIDC_ISSUER"):
    BATCHBOARD_OIDC_ISSUER = _env_url("BATCHBOARD_OIDC_ISSUER", "https://sso.example.com")
BATCHBOARD_OIDC_ENDPOINTS = {
    name: _env_url(f"BATCHBOARD_OIDC_{name.upper()}", f"https://sso.example.com/{name}")
    for name in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri", "end_session_endpoint")
    if _env(f"BATCHBOARD_OIDC_{name.upper()}")
}
if BATCHBOARD_OIDC_ENABLED and not BATCHBOARD_OIDC_ISSUER:
    _missing = {"authorization_endpoint", "token_endpoint", "userinfo_endpoint"} - BATCHBOARD_OIDC_ENDPOINTS.keys()
    if _missing:
        raise ImproperlyConfigured(
            "BATCHBOARD_OIDC_CLIENT_ID is set, so single sign-on is on: set BATCHBOARD_OIDC_ISSUER (its discovery "
            "document names the endpoints), or each of "
            + ", ".join(f"BATCHBOARD_OIDC_{name.upper()}" for name in sorted(_missing))
            + "."
        )
BATCHBOARD_OIDC_SCOPES = _env("BATCHBOARD_OIDC_SCOPES", "openid email profile")
if BATCHBOARD_OIDC_ENABLED and "openid" not in BATCHBOARD_OIDC_SCOPES.split():
    raise ImproperlyConfigured(f"BATCHBOARD_OIDC_SCOPES must include openid; got {BATCHBOARD_OIDC_SCOPES!r}.")
BATCHBOARD_OIDC_SIGN_ALGO = _env("BATCHBOARD_OIDC_SIGN_ALGO", "RS256")
if not re.fullmatch(r"(RS|ES|PS|HS)(256|384|512)", BATCHBOARD_OIDC_SIGN_ALGO):
    raise ImproperlyConfigured(
        f"BATCHBOARD_OIDC_SIGN_ALGO must be an algorithm such as RS256 or HS256; got {BATCHBOARD_OIDC_SIGN_ALGO!r}."
    )
if BATCHBOARD_OIDC_ENABLED and BATCHBOARD_OIDC_SIGN_ALGO.startswith("HS") and not BATCHBOARD_OIDC_CLIENT_SECRET:
    raise ImproperlyConfigured("BATCHBOARD_OIDC_SIGN_ALGO HS* verifies tokens with the client secret: set it.")
BATCHBOARD_OIDC_TIMEOUT = _env_float("BATCHBOARD_OIDC_TIMEOUT", 10.0, 1.0, 120.0)
BATCHBOARD_OIDC_NAME = _env("BATCHBOARD_OIDC_NAME", "single sign-on")[:60]
BATCHBOARD_OIDC_GROUPS_CLAIM = _env("BATCHBOARD_OIDC_GROUPS_CLAIM", "groups")
BATCHBOARD_OIDC_REQUIRED_GROUPS = [
    name.strip() for name in _env("BATCHBOARD_OIDC_REQUIRED_GROUPS").split(",") if name.strip()
]
# After a single sign-on session, logging out goes on to the provider's end_session_endpoint (if it has one).
BATCHBOARD_OIDC_PROVIDER_LOGOUT = _env_bool("BATCHBOARD_OIDC_PROVIDER_LOGOUT", False)
if BATCHBOARD_OIDC_PROVIDER_LOGOUT and BATCHBOARD_OIDC_ENABLED:
    # The logout form's redirect goes there, and browsers hold a form's redirects to the CSP's form-action.
    _end_session = BATCHBOARD_OIDC_ENDPOINTS.get("end_session_endpoint") or BATCHBOARD_OIDC_ISSUER
    SECURE_CSP["form-action"] = [*SECURE_CSP["form-action"], "/".join(_end_session.split("/")[:3])]
# Off: the password form is hidden and password logins are refused (here and in the admin), except for the
# break-glass user's, at /accounts/login/?local=1.
BATCHBOARD_LOCAL_LOGIN = _env_bool("BATCHBOARD_LOCAL_LOGIN", True)
BATCHBOARD_BREAK_GLASS_USER = _env("BATCHBOARD_BREAK_GLASS_USER")
if not BATCHBOARD_LOCAL_LOGIN and not BATCHBOARD_OIDC_ENABLED:
    raise ImproperlyConfigured(
        "BATCHBOARD_LOCAL_LOGIN=false turns password logins off, but single sign-on is not configured "
        "(BATCHBOARD_OIDC_CLIENT_ID): nobody could log in."
    )
# mozilla-django-oidc's own settings (it reads its endpoints and client settings through accounts.provider).
OIDC_USE_PKCE = True
OIDC_AUTHENTICATION_CALLBACK_URL = "accounts:oidc_callback"
OIDC_STORE_ID_TOKEN = False
OIDC_STORE_ACCESS_TOKEN = False

# "plain" for a terminal, "json" for a log platform: one object per line, with the request's or the sync pass's context.
BATCHBOARD_LOG_FORMAT = _env("BATCHBOARD_LOG_FORMAT", "plain").lower()
if BATCHBOARD_LOG_FORMAT not in ("plain", "json"):
    raise ImproperlyConfigured(f"BATCHBOARD_LOG_FORMAT must be plain or json; got {BATCHBOARD_LOG_FORMAT!r}.")
_log_level = _env("BATCHBOARD_LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "batches.log_format.PlainFormatter", "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "batches.log_format.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": BATCHBOARD_LOG_FORMAT},
        "null": {"class": "logging.NullHandler"},
    },
    "loggers": {
        "batches": {"handlers": ["console"], "level": _log_level, "propagate": False},
        # A line per request for a log platform; in a terminal the development server prints its own.
        "batches.requests": {
            "handlers": ["console"],
            "level": _log_level if BATCHBOARD_LOG_FORMAT == "json" else "WARNING",
            "propagate": False,
        },
        "sandbox": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "audit": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # django-axes logs each failed login and lockout (username and IP, never the password).
        "axes": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # Single sign-on: refused sign-ins and an unreachable provider (never a token or the client secret).
        "accounts": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # A line per task started and finished is for `manage.py db_worker` (its -v sets these); `serve`'s worker
        # thread reports only problems (a failed reaction logs its reason under "batches").
        "django.tasks": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        "django_tasks_db": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # Unhandled errors (500s) are logged with their traceback; Django only does so by default when DEBUG is on.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        # apprise logs destination URLs (tokens included) at debug level: kept off the logs; the notifications app
        # reads its warnings, redacted, into the delivery log.
        "apprise": {"handlers": ["null"], "level": "WARNING", "propagate": False},
        # urllib3 logs each request's path (where webhook URLs keep their tokens) at debug level: never logged.
        "urllib3": {"level": "WARNING"},
    },
}

VERSION = "0.1.0"
