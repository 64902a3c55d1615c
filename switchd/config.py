"""Settings read from `SWITCH_*` environment variables, validated all at once."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class ConfigError(Exception):
    """One or more variables are invalid; `problems` holds one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    """Everything switchd reads from its environment."""

    jwt_secret: str
    jwt_secret_previous: str | None = None
    admin_jwt_secret: str | None = None  # None: the management API answers 403
    admin_jwt_secret_previous: str | None = None
    db_name: str = "switch.db"
    faktory_url: str | None = None
    production_queue: str = "switch"
    production_queue_namespace: str = "pubsub"
    consumer_concurrency: int = 10
    server_host: str = "0.0.0.0"
    server_port: int = 8080
    retry_schedule: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
    faktory_retry: int = 25
    delivery_timeout: float = 15.0
    quick_retries: int = 2
    quick_retry_max_wait: float = 5.0
    lease_seconds: float = 0.0  # 0 = derived from the delivery bounds, see effective_lease
    max_payload_bytes: int = 1_048_576
    shutdown_grace: float = 30.0
    circuit_failures: int = 5  # consecutive transient failures that open a circuit
    circuit_cooldown: float = 5.0  # seconds an opened circuit waits before its first probe
    circuit_max_cooldown: float = 300.0  # the longest wait, doubling after each failed probe
    set_aside_max: int = 1000  # jobs held in memory for busy or sick endpoints
    endpoint_max_in_flight: int = 0  # a fixed cap on every endpoint's limit; 0 = none
    log_retention: float = 7 * 86400.0
    log_payloads: bool = False
    log_level: str = "info"
    log_format: str = "auto"

    @property
    def effective_lease(self) -> float:
        """Seconds a local job stays leased: longer than the worst-case delivery."""
        if self.lease_seconds:
            return self.lease_seconds
        return max(60.0, self.worst_case_delivery + 30.0)

    @property
    def worst_case_delivery(self) -> float:
        """Longest one delivery (all quick retries included) can take."""
        attempts = self.quick_retries + 1
        return attempts * self.delivery_timeout + self.quick_retries * self.quick_retry_max_wait


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("auto", "json", "console")


def _text(raw: str) -> str:
    if not raw.strip():
        raise ValueError
    return raw.strip()


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if not low <= value <= high:
            raise ValueError
        return value

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw.strip())
        if not math.isfinite(value) or not low <= value <= high:
            raise ValueError
        return value

    return parse


def _schedule(raw: str) -> tuple[float, ...]:
    parts = [p for p in raw.replace(" ", "").split(",") if p]
    values = tuple(_seconds(0, 30 * 86400)(p) for p in parts)
    if not values:
        raise ValueError
    return values


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `1h` or `7d` as positive seconds; ValueError otherwise."""
    text = text.strip().lower()
    scale = DURATION_UNITS.get(text[-1:])
    value = float(text[:-1] if scale else text) * (scale or 1)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


BOOLEANS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _boolean(raw: str) -> bool:
    return BOOLEANS[raw.strip().lower()]  # KeyError is reported like a ValueError


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError
        return value

    return parse


def _faktory_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("tcp", "tcp+tls") or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError
    if parts.port is None:  # raises ValueError when out of range
        raise ValueError
    return raw.strip()


def _redact(name: str, raw: str) -> str:
    """The value as shown in an error line, without a Faktory password."""
    if name != "FAKTORY_URL":
        return raw
    return re.sub(r"//[^@/]*@", "//***@", raw)


# variable -> (Settings field, parser, expected form shown on error)
VARIABLES: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "SWITCH_JWT_SECRET": ("jwt_secret", _text, "a non-empty secret (32+ bytes advised)"),
    "SWITCH_JWT_SECRET_PREVIOUS": (
        "jwt_secret_previous",
        _text,
        "a non-empty secret: the one being rotated out",
    ),
    "SWITCH_ADMIN_JWT_SECRET": (
        "admin_jwt_secret",
        _text,
        "a non-empty secret (32+ bytes advised), not a publisher secret",
    ),
    "SWITCH_ADMIN_JWT_SECRET_PREVIOUS": (
        "admin_jwt_secret_previous",
        _text,
        "a non-empty secret: the admin one being rotated out",
    ),
    "SWITCH_DB_NAME": ("db_name", _text, "a file path"),
    "FAKTORY_URL": ("faktory_url", _faktory_url, "tcp://[:password@]host:port or tcp+tls://…"),
    "SWITCH_PRODUCTION_QUEUE": ("production_queue", _text, "a queue name"),
    "SWITCH_PRODUCTION_QUEUE_NAMESPACE": ("production_queue_namespace", _text, "a jobtype"),
    "SWITCH_CONSUMER_CONCURRENCY_LEVEL": (
        "consumer_concurrency",
        _int_range(0, 10_000),
        "an integer 0..10000",
    ),
    "SWITCH_SERVER_HOST": ("server_host", _text, "an address to listen on"),
    "SWITCH_SERVER_PORT": ("server_port", _int_range(0, 65535), "an integer 0..65535"),
    "SWITCH_RETRY_SCHEDULE": (
        "retry_schedule",
        _schedule,
        "comma-separated seconds, e.g. 5,300,1800",
    ),
    "SWITCH_FAKTORY_RETRY": ("faktory_retry", _int_range(0, 100), "an integer 0..100"),
    "SWITCH_DELIVERY_TIMEOUT": ("delivery_timeout", _seconds(0.1, 600), "seconds, 0.1..600"),
    "SWITCH_QUICK_RETRIES": ("quick_retries", _int_range(0, 10), "an integer 0..10"),
    "SWITCH_QUICK_RETRY_MAX_WAIT": (
        "quick_retry_max_wait",
        _seconds(0, 60),
        "seconds, 0..60",
    ),
    "SWITCH_LEASE_SECONDS": ("lease_seconds", _seconds(1, 86400), "seconds, 1..86400"),
    "SWITCH_MAX_PAYLOAD_BYTES": (
        "max_payload_bytes",
        _int_range(1024, 64 * 1024 * 1024),
        "bytes, 1024..67108864",
    ),
    "SWITCH_SHUTDOWN_GRACE": ("shutdown_grace", _seconds(0, 3600), "seconds, 0..3600"),
    "SWITCH_CIRCUIT_FAILURES": ("circuit_failures", _int_range(1, 1000), "an integer 1..1000"),
    "SWITCH_CIRCUIT_COOLDOWN": ("circuit_cooldown", _seconds(0.1, 3600), "seconds, 0.1..3600"),
    "SWITCH_CIRCUIT_MAX_COOLDOWN": (
        "circuit_max_cooldown",
        _seconds(0.1, 86400),
        "seconds, 0.1..86400",
    ),
    "SWITCH_SET_ASIDE_MAX": ("set_aside_max", _int_range(0, 1_000_000), "an integer 0..1000000"),
    "SWITCH_ENDPOINT_MAX_IN_FLIGHT": (
        "endpoint_max_in_flight",
        _int_range(0, 10_000),
        "an integer 0..10000 (0: no fixed cap)",
    ),
    "SWITCH_LOG_RETENTION": (
        "log_retention",
        parse_duration,
        "a duration such as 7d, 12h or 3600",
    ),
    "SWITCH_LOG_PAYLOADS": ("log_payloads", _boolean, "true|false (or 1|0, yes|no)"),
    "SWITCH_LOG_LEVEL": ("log_level", _choice(LOG_LEVELS), "one of " + "|".join(LOG_LEVELS)),
    "SWITCH_LOG_FORMAT": ("log_format", _choice(LOG_FORMATS), "one of " + "|".join(LOG_FORMATS)),
}


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Parse every variable; raise ConfigError listing each bad one."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for name, (field, parse, expected) in VARIABLES.items():
        raw = env.get(name)
        if raw is None or (raw == "" and name != "SWITCH_JWT_SECRET"):
            continue
        try:
            values[field] = parse(raw)
        except (ValueError, TypeError, OverflowError, KeyError):
            problems.append(f"{name}={_redact(name, raw)!r} is invalid: expected {expected}")
    values.update(overrides)
    if "jwt_secret" not in values and not any(p.startswith("SWITCH_JWT_SECRET") for p in problems):
        problems.append("SWITCH_JWT_SECRET is required: expected a secret (32+ bytes advised)")
    settings_problems = _secret_checks(values) + _cross_checks(values)
    if problems or settings_problems:
        raise ConfigError(problems + settings_problems)
    return Settings(**values)


PUBLISHER_SECRETS = ("SWITCH_JWT_SECRET", "SWITCH_JWT_SECRET_PREVIOUS")
ADMIN_SECRETS = ("SWITCH_ADMIN_JWT_SECRET", "SWITCH_ADMIN_JWT_SECRET_PREVIOUS")


def _secret_checks(values: dict[str, Any]) -> list[str]:
    """Admin secrets differ from every publisher secret (publishers hold those, so an equal
    one would let any of them mint admin tokens); a previous admin secret needs a current."""
    problems = []
    for admin in ADMIN_SECRETS:
        secret = values.get(VARIABLES[admin][0])
        for publisher in PUBLISHER_SECRETS:
            if secret is not None and secret == values.get(VARIABLES[publisher][0]):
                problems.append(
                    f"{admin} is invalid: expected a secret different from {publisher} "
                    "(publishers hold that one and could mint admin tokens)"
                )
    if values.get("admin_jwt_secret_previous") and not values.get("admin_jwt_secret"):
        problems.append(
            "SWITCH_ADMIN_JWT_SECRET_PREVIOUS is invalid: expected SWITCH_ADMIN_JWT_SECRET "
            "to be set too (the previous secret only bridges a rotation)"
        )
    return problems


def _cross_checks(values: dict[str, Any]) -> list[str]:
    """Problems of valid values that do not fit together (defaults filled in)."""
    settings = Settings(**{**values, "jwt_secret": "-"})
    problems = []
    lease, worst = settings.lease_seconds, settings.worst_case_delivery
    if lease and lease <= worst:
        problems.append(
            f"SWITCH_LEASE_SECONDS={lease:g} is invalid: expected more than the worst-case "
            f"delivery ({worst:g} s = attempts × timeout + quick-retry waits)"
        )
    if settings.circuit_max_cooldown < settings.circuit_cooldown:
        problems.append(
            f"SWITCH_CIRCUIT_MAX_COOLDOWN={settings.circuit_max_cooldown:g} is invalid: expected "
            f"at least SWITCH_CIRCUIT_COOLDOWN ({settings.circuit_cooldown:g} s)"
        )
    return problems
