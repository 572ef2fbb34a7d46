"""simsched settings: everything that differs between machines comes from the environment."""

import json
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# --- Core ---------------------------------------------------------------------------------------

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"
DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", DEV_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEV_SECRET_KEY:
    raise ImproperlyConfigured("DEBUG is off: set SECRET_KEY to a long random value.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver")
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS")
CSRF_TRUSTED_ORIGINS = CORS_ALLOWED_ORIGINS

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "machines",
    "simulations",
    "convergence",
    "dashboard",
]

MIDDLEWARE = [
    "simsched.observability.middleware.ObservabilityMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "simsched.exceptions.JsonNotFoundMiddleware",  # outside CommonMiddleware: after APPEND_SLASH
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# The admin's messages live in the session: the default cookie storage derives a signing key on
# every request, API requests included.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"

ROOT_URLCONF = "simsched.urls"
ASGI_APPLICATION = "simsched.asgi.application"
APPEND_SLASH = False  # every API path answers with and without the trailing slash

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

# --- Database -----------------------------------------------------------------------------------

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool("DB_POOL", True):
    # A process-wide pool keeps connections warm and bounds them (CONN_MAX_AGE must be 0).
    # Server-side binding lets psycopg prepare the statements a connection repeats: planning
    # the ingest statement takes longer than running it (EXPLAIN ANALYZE: 0.8 ms vs 0.5 ms).
    # Set DB_PREPARED_STATEMENTS=0 behind a PgBouncer in transaction mode.
    prepared = env_bool("DB_PREPARED_STATEMENTS", True)
    DATABASES["default"]["OPTIONS"] = {
        "server_side_binding": prepared,
        "prepare_threshold": 5 if prepared else None,
        "pool": {
            "min_size": int(os.environ.get("DB_POOL_MIN_SIZE", 2)),
            "max_size": int(os.environ.get("DB_POOL_MAX_SIZE", 20)),
            "timeout": float(os.environ.get("DB_POOL_TIMEOUT", 3)),  # then 503 during an outage
        },
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # Writers queue up instead of failing with "database is locked", and a transaction
        # takes the write lock when it begins, which serializes scheduler assignment.
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
# Parallel test runs (CI's two passes, developers' shells) each name their own test database.
_TEST_DB = os.environ.get("SIMSCHED_TEST_DB", "")
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / f"test-db{_TEST_DB}.sqlite3")}
elif _TEST_DB:
    DATABASES["default"]["TEST"] = {"NAME": f"test_simsched{_TEST_DB}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Channels -----------------------------------------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [REDIS_URL],
                "prefix": os.environ.get("REDIS_PREFIX", "simsched"),
                "capacity": 1500,
                "expiry": 30,
            },
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# --- Auth ---------------------------------------------------------------------------------------

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "dashboard"
LOGOUT_REDIRECT_URL = "login"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

# --- REST framework -----------------------------------------------------------------------------

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "simsched.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["simsched.parsers.JSONParser"],  # strict: no NaN literals
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "simsched.filters.StableOrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "simsched.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "simsched.exceptions.api_exception_handler",
    "NON_FIELD_ERRORS_KEY": "non_field_errors",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "simsched API",
    "DESCRIPTION": (
        "Schedule AI simulations onto large cloud machines and watch them converge. "
        "Authenticate with a session (browser) or `Authorization: Token <key>`."
    ),
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "simsched.openapi.state_parameter_rules",
        "simsched.openapi.document_errors",
    ],
    "ENUM_NAME_OVERRIDES": {
        "MachineStatusEnum": "machines.models.Machine.Status",
        "SimulationStatusEnum": "simulations.models.Simulation.Status",
        "NewSimulationStatusEnum": [("pending", "Pending")],
        "SettableMachineStatusEnum": ["available", "maintenance"],
    },
}

# --- Request limits -----------------------------------------------------------------------------

MAX_REQUEST_BYTES = int(os.environ.get("MAX_REQUEST_BYTES", 4 * 1024 * 1024))
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

# --- Scheduler ----------------------------------------------------------------------------------

SIMSCHED_HEARTBEAT_TIMEOUT = int(os.environ.get("SIMSCHED_HEARTBEAT_TIMEOUT", 60))
SIMSCHED_MAX_RETRIES = int(os.environ.get("SIMSCHED_MAX_RETRIES", 2))
SIMSCHED_SCHEDULER_INTERVAL = float(os.environ.get("SIMSCHED_SCHEDULER_INTERVAL", 5))
SIMSCHED_SIMULATED_RATE = float(os.environ.get("SIMSCHED_SIMULATED_RATE", 20))
# Lines of stdout/stderr kept per simulation (the oldest go first).
SIMSCHED_LOG_LINES = int(os.environ.get("SIMSCHED_LOG_LINES", 10_000))
# How long a server process trusts a token it has checked (0: check every request).
SIMSCHED_TOKEN_CACHE_SECONDS = float(os.environ.get("SIMSCHED_TOKEN_CACHE_SECONDS", 5))
# Agents' single-point writes served without Django's request handling around the same
# service and policy (convergence/asgi.py); 0 sends them the long way too.
SIMSCHED_INGEST_SHORTCUT = env_bool("SIMSCHED_INGEST_SHORTCUT", True)
# How long a server process trusts Redis's answer to "does anyone watch this simulation?" before
# skipping a point's broadcast (0: ask for every point). Sockets catch up on what it skipped.
SIMSCHED_MEMBERSHIP_CACHE_SECONDS = float(os.environ.get("SIMSCHED_MEMBERSHIP_CACHE_SECONDS", 1))

# --- Guards (simulations/guards.py) ---------------------------------------------------------------

# The guards a new simulation gets unless it says otherwise (JSON, the resource's `guards` shape).
SIMSCHED_DEFAULT_GUARDS = json.loads(os.environ.get("SIMSCHED_DEFAULT_GUARDS", '{"nan": true}'))
# How long a server process trusts what it read of a simulation's plateau/divergence guards.
SIMSCHED_GUARD_CACHE_SECONDS = float(os.environ.get("SIMSCHED_GUARD_CACHE_SECONDS", 5))

# --- Static files, i18n -------------------------------------------------------------------------

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Production hardening (DEBUG off) -----------------------------------------------------------

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    # Load balancers, healthchecks and Prometheus probe over HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^health/?$", r"^metrics/?$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", 60 * 60 * 24 * 30))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", True)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", True)
    SECURE_REFERRER_POLICY = "same-origin"

# --- Metrics ------------------------------------------------------------------------------------

# GET /metrics needs `Authorization: Bearer <METRICS_TOKEN>`; unset, it answers loopback only.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")

# --- Logging ------------------------------------------------------------------------------------

LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain")  # "json": one JSON object per line
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured("LOG_FORMAT must be plain or json.")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {"()": "simsched.observability.logs.JSONFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
