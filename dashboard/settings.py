"""Django settings for batchboard, read from the environment (see the README's configuration table)."""

import os
import tempfile
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


def _env_url(name, default):
    raw = _env(name, default).rstrip("/")
    if not raw.startswith(("http://", "https://")) or raw[-3:] == "://":
        raise ImproperlyConfigured(f"{name} must be an http(s) URL such as {default}; got {raw!r}.")
    return raw


DEBUG = _env_bool("DJANGO_DEBUG", False)

SECRET_KEY = _env("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and _env_bool("DJANGO_REQUIRE_SECRET_KEY", False):
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set.")
    # A stable per-checkout key so sessions survive restarts of a local install.
    _key_file = BASE_DIR / "var" / "secret_key"
    if _key_file.exists():
        SECRET_KEY = _key_file.read_text().strip()
    else:
        from django.utils.crypto import get_random_string

        SECRET_KEY = get_random_string(64)
        _key_file.parent.mkdir(parents=True, exist_ok=True)
        _key_file.write_text(SECRET_KEY)
        _key_file.chmod(0o600)

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

# With no key the dashboard runs against its own simulated API (the sandbox app).
SANDBOX_MODE = not OPENAI_API_KEY
# The sandbox API is served only in sandbox mode unless asked for (e.g. to try a client against it beside a real key).
SANDBOX_ENABLED = _env_bool("SANDBOX_ENABLED", SANDBOX_MODE)
SANDBOX_API_KEY = "sk-sandbox"
SANDBOX_URL = _env_url("SANDBOX_URL", "http://127.0.0.1:8000/sandbox/v1")
OPENAI_BASE_URL = SANDBOX_URL if SANDBOX_MODE else _env_url("OPENAI_BASE_URL", "https://api.openai.com/v1")

# Simulated seconds per real second; 60 finishes a small batch in about a minute.
SANDBOX_SPEED = _env_float("SANDBOX_SPEED", 60.0, 0.001, 1_000_000.0)
SANDBOX_FILES_DIR = Path(_env("SANDBOX_FILES_DIR", str(BASE_DIR / "var" / "sandbox-files")))
SANDBOX_SEED = _env_bool("SANDBOX_SEED", True)
# Fault injection, for tests and demos of the dashboard's resilience.
SANDBOX_LATENCY = _env_float("SANDBOX_LATENCY", 0.0, 0.0, 60.0)
SANDBOX_ERROR_RATE = _env_float("SANDBOX_ERROR_RATE", 0.0, 0.0, 1.0)
SANDBOX_RATE_LIMIT_RATE = _env_float("SANDBOX_RATE_LIMIT_RATE", 0.0, 0.0, 1.0)
SANDBOX_RETRY_AFTER = _env_float("SANDBOX_RETRY_AFTER", 1.0, 0.0, 3600.0)

# How often the list is refreshed from upstream at most, whatever the number of viewers.
BATCHBOARD_REFRESH_INTERVAL = _env_float("BATCHBOARD_REFRESH_INTERVAL", 2.0, 0.0, 3600.0)

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
    "batches",
    "sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
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
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
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

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
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
STATIC_ROOT = BASE_DIR / "var" / "staticfiles"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

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
SESSION_COOKIE_SECURE = _env_bool("DJANGO_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
if _env_bool("DJANGO_BEHIND_HTTPS_PROXY", False):
    # The proxy terminates TLS and says so in X-Forwarded-Proto, so share links and redirects use https.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SAMESITE = "Lax"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "batches": {"handlers": ["console"], "level": _env("BATCHBOARD_LOG_LEVEL", "INFO"), "propagate": False},
        "sandbox": {"handlers": ["console"], "level": "WARNING", "propagate": False},
        # Unhandled errors (500s) are logged with their traceback; Django only does so by default when DEBUG is on.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}

VERSION = "0.1.0"
