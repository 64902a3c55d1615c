"""Unit tests for switchd.config.load_settings: defaults, parsing, and error reporting."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from switchd.config import VARIABLES, ConfigError, Settings, load_settings

SECRET = "s" * 40


def env(**values: str) -> dict[str, str]:
    """An environment holding a valid secret plus the given variables."""
    return {"SWITCH_JWT_SECRET": SECRET, **values}


def problems_of(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_settings(environ)
    error = info.value
    # The message is the problems, one per line.
    assert str(error).splitlines() == error.problems
    return error.problems


# --- defaults -------------------------------------------------------------------------


def test_defaults_match_the_design() -> None:
    settings = load_settings({"SWITCH_JWT_SECRET": SECRET})
    assert settings.jwt_secret == SECRET
    assert settings.db_name == "switch.db"
    assert settings.faktory_url is None
    assert settings.production_queue == "switch"
    assert settings.production_queue_namespace == "pubsub"
    assert settings.consumer_concurrency == 10
    assert settings.server_host == "0.0.0.0"
    assert settings.server_port == 8080
    assert settings.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.faktory_retry == 25
    assert settings.delivery_timeout == 15.0
    assert settings.max_payload_bytes == 1_048_576
    assert settings.shutdown_grace == 30.0
    assert settings.log_level == "info"
    assert settings.log_format == "auto"
    assert settings.quick_retries == 2
    assert settings.quick_retry_max_wait == 5.0
    assert settings.lease_seconds == 0.0
    assert settings.log_retention == 7 * 86400.0
    assert settings.log_payloads is False
    assert settings.circuit_failures == 5
    assert settings.circuit_cooldown == 5.0
    assert settings.circuit_max_cooldown == 300.0
    assert settings.set_aside_max == 1000
    assert settings.endpoint_max_in_flight == 0


def test_unrelated_variables_are_ignored() -> None:
    settings = load_settings(env(PATH="/usr/bin", SWITCH_UNKNOWN="whatever", HOME="/root"))
    assert settings == Settings(jwt_secret=SECRET)


def test_empty_optional_variables_mean_default() -> None:
    settings = load_settings(
        env(SWITCH_DB_NAME="", SWITCH_SERVER_PORT="", SWITCH_RETRY_SCHEDULE="", FAKTORY_URL="")
    )
    assert settings.db_name == "switch.db"
    assert settings.server_port == 8080
    assert settings.retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 36000)
    assert settings.faktory_url is None


def test_settings_are_frozen() -> None:
    settings = load_settings(env())
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.server_port = 1  # type: ignore[misc]


# --- every variable parsed --------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "field", "expected"),
    [
        ("SWITCH_JWT_SECRET", "  another-secret  ", "jwt_secret", "another-secret"),
        ("SWITCH_DB_NAME", "/var/lib/switchd/switch.db", "db_name", "/var/lib/switchd/switch.db"),
        ("FAKTORY_URL", "tcp://localhost:7419", "faktory_url", "tcp://localhost:7419"),
        (
            "FAKTORY_URL",
            "tcp+tls://:p4ss@faktory.example.com:7419",
            "faktory_url",
            "tcp+tls://:p4ss@faktory.example.com:7419",
        ),
        ("FAKTORY_URL", "tcp://10.0.0.5:7419/", "faktory_url", "tcp://10.0.0.5:7419/"),
        ("SWITCH_PRODUCTION_QUEUE", "critical", "production_queue", "critical"),
        ("SWITCH_PRODUCTION_QUEUE_NAMESPACE", "events", "production_queue_namespace", "events"),
        ("SWITCH_CONSUMER_CONCURRENCY_LEVEL", "0", "consumer_concurrency", 0),
        ("SWITCH_CONSUMER_CONCURRENCY_LEVEL", " 64 ", "consumer_concurrency", 64),
        ("SWITCH_CONSUMER_CONCURRENCY_LEVEL", "10000", "consumer_concurrency", 10_000),
        ("SWITCH_SERVER_HOST", "127.0.0.1", "server_host", "127.0.0.1"),
        ("SWITCH_SERVER_PORT", "9090", "server_port", 9090),
        ("SWITCH_SERVER_PORT", "0", "server_port", 0),
        ("SWITCH_SERVER_PORT", "65535", "server_port", 65535),
        ("SWITCH_RETRY_SCHEDULE", "1,2,3", "retry_schedule", (1.0, 2.0, 3.0)),
        ("SWITCH_FAKTORY_RETRY", "0", "faktory_retry", 0),
        ("SWITCH_FAKTORY_RETRY", "100", "faktory_retry", 100),
        ("SWITCH_DELIVERY_TIMEOUT", "2.5", "delivery_timeout", 2.5),
        ("SWITCH_DELIVERY_TIMEOUT", "600", "delivery_timeout", 600.0),
        ("SWITCH_QUICK_RETRIES", "0", "quick_retries", 0),
        ("SWITCH_QUICK_RETRIES", "10", "quick_retries", 10),
        ("SWITCH_QUICK_RETRY_MAX_WAIT", "0.5", "quick_retry_max_wait", 0.5),
        ("SWITCH_LEASE_SECONDS", "120", "lease_seconds", 120.0),
        ("SWITCH_MAX_PAYLOAD_BYTES", "2048", "max_payload_bytes", 2048),
        ("SWITCH_MAX_PAYLOAD_BYTES", "67108864", "max_payload_bytes", 64 * 1024 * 1024),
        ("SWITCH_SHUTDOWN_GRACE", "0", "shutdown_grace", 0.0),
        ("SWITCH_SHUTDOWN_GRACE", "3600", "shutdown_grace", 3600.0),
        ("SWITCH_LOG_RETENTION", "7d", "log_retention", 604_800.0),
        ("SWITCH_LOG_RETENTION", "12h", "log_retention", 43_200.0),
        ("SWITCH_LOG_RETENTION", "15m", "log_retention", 900.0),
        ("SWITCH_LOG_RETENTION", "90s", "log_retention", 90.0),
        ("SWITCH_LOG_RETENTION", "3600", "log_retention", 3600.0),
        ("SWITCH_LOG_RETENTION", " 2D ", "log_retention", 172_800.0),
        ("SWITCH_LOG_RETENTION", "1.5h", "log_retention", 5400.0),
        ("SWITCH_LOG_PAYLOADS", "true", "log_payloads", True),
        ("SWITCH_LOG_PAYLOADS", " YES ", "log_payloads", True),
        ("SWITCH_LOG_PAYLOADS", "1", "log_payloads", True),
        ("SWITCH_LOG_PAYLOADS", "False", "log_payloads", False),
        ("SWITCH_LOG_PAYLOADS", "no", "log_payloads", False),
        ("SWITCH_LOG_PAYLOADS", "0", "log_payloads", False),
        ("SWITCH_LOG_LEVEL", "debug", "log_level", "debug"),
        ("SWITCH_LOG_LEVEL", "WARNING", "log_level", "warning"),
        ("SWITCH_LOG_LEVEL", " Error ", "log_level", "error"),
        ("SWITCH_LOG_FORMAT", "json", "log_format", "json"),
        ("SWITCH_LOG_FORMAT", "Console", "log_format", "console"),
        ("SWITCH_CIRCUIT_FAILURES", "1", "circuit_failures", 1),
        ("SWITCH_CIRCUIT_FAILURES", "1000", "circuit_failures", 1000),
        ("SWITCH_CIRCUIT_COOLDOWN", "0.5", "circuit_cooldown", 0.5),
        ("SWITCH_CIRCUIT_MAX_COOLDOWN", "86400", "circuit_max_cooldown", 86400.0),
        ("SWITCH_SET_ASIDE_MAX", "0", "set_aside_max", 0),
        ("SWITCH_SET_ASIDE_MAX", "1000000", "set_aside_max", 1_000_000),
        ("SWITCH_ENDPOINT_MAX_IN_FLIGHT", "4", "endpoint_max_in_flight", 4),
    ],
)
def test_each_variable_is_parsed(variable: str, raw: str, field: str, expected: object) -> None:
    settings = load_settings(env(**{variable: raw}))
    value = getattr(settings, field)
    assert value == expected
    assert type(value) is type(expected)


def test_all_variables_together() -> None:
    settings = load_settings(
        {
            "SWITCH_JWT_SECRET": SECRET,
            "SWITCH_DB_NAME": "x.db",
            "FAKTORY_URL": "tcp://:pw@fk:7419",
            "SWITCH_PRODUCTION_QUEUE": "q",
            "SWITCH_PRODUCTION_QUEUE_NAMESPACE": "ns",
            "SWITCH_CONSUMER_CONCURRENCY_LEVEL": "3",
            "SWITCH_SERVER_HOST": "::",
            "SWITCH_SERVER_PORT": "8181",
            "SWITCH_RETRY_SCHEDULE": "1,2",
            "SWITCH_FAKTORY_RETRY": "7",
            "SWITCH_DELIVERY_TIMEOUT": "4",
            "SWITCH_QUICK_RETRIES": "1",
            "SWITCH_QUICK_RETRY_MAX_WAIT": "2",
            "SWITCH_LEASE_SECONDS": "30",
            "SWITCH_MAX_PAYLOAD_BYTES": "4096",
            "SWITCH_SHUTDOWN_GRACE": "5",
            "SWITCH_LOG_LEVEL": "critical",
            "SWITCH_LOG_FORMAT": "console",
        }
    )
    assert settings == Settings(
        jwt_secret=SECRET,
        db_name="x.db",
        faktory_url="tcp://:pw@fk:7419",
        production_queue="q",
        production_queue_namespace="ns",
        consumer_concurrency=3,
        server_host="::",
        server_port=8181,
        retry_schedule=(1.0, 2.0),
        faktory_retry=7,
        delivery_timeout=4.0,
        quick_retries=1,
        quick_retry_max_wait=2.0,
        lease_seconds=30.0,
        max_payload_bytes=4096,
        shutdown_grace=5.0,
        log_level="critical",
        log_format="console",
    )


def test_overrides_take_precedence() -> None:
    settings = load_settings(env(SWITCH_SERVER_PORT="9000"), server_port=1234)
    assert settings.server_port == 1234


# --- bad values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "expected_form"),
    [
        ("SWITCH_JWT_SECRET", "   ", "secret"),
        ("SWITCH_DB_NAME", "   ", "a file path"),
        ("FAKTORY_URL", "localhost:7419", "tcp://"),
        ("FAKTORY_URL", "http://localhost:7419", "tcp://"),
        ("FAKTORY_URL", "tcp://localhost", "tcp://"),
        ("FAKTORY_URL", "tcp://localhost:port", "tcp://"),
        ("SWITCH_PRODUCTION_QUEUE", " ", "a queue name"),
        ("SWITCH_PRODUCTION_QUEUE_NAMESPACE", "\t", "a jobtype"),
        ("SWITCH_CONSUMER_CONCURRENCY_LEVEL", "ten", "an integer 0..10000"),
        ("SWITCH_CONSUMER_CONCURRENCY_LEVEL", "-1", "an integer 0..10000"),
        ("SWITCH_CONSUMER_CONCURRENCY_LEVEL", "10001", "an integer 0..10000"),
        ("SWITCH_CONSUMER_CONCURRENCY_LEVEL", "2.5", "an integer 0..10000"),
        ("SWITCH_SERVER_HOST", "  ", "an address"),
        ("SWITCH_SERVER_PORT", "http", "an integer 0..65535"),
        ("SWITCH_SERVER_PORT", "65536", "an integer 0..65535"),
        ("SWITCH_SERVER_PORT", "-80", "an integer 0..65535"),
        ("SWITCH_RETRY_SCHEDULE", "5,soon", "comma-separated seconds"),
        ("SWITCH_FAKTORY_RETRY", "101", "an integer 0..100"),
        ("SWITCH_FAKTORY_RETRY", "many", "an integer 0..100"),
        ("SWITCH_DELIVERY_TIMEOUT", "0", "seconds, 0.1..600"),
        ("SWITCH_DELIVERY_TIMEOUT", "601", "seconds, 0.1..600"),
        ("SWITCH_DELIVERY_TIMEOUT", "nan", "seconds, 0.1..600"),
        ("SWITCH_DELIVERY_TIMEOUT", "inf", "seconds, 0.1..600"),
        ("SWITCH_DELIVERY_TIMEOUT", "15s", "seconds, 0.1..600"),
        ("SWITCH_QUICK_RETRIES", "11", "an integer 0..10"),
        ("SWITCH_QUICK_RETRY_MAX_WAIT", "61", "seconds, 0..60"),
        ("SWITCH_LEASE_SECONDS", "0.5", "seconds, 1..86400"),
        ("SWITCH_LEASE_SECONDS", "86401", "seconds, 1..86400"),
        ("SWITCH_MAX_PAYLOAD_BYTES", "1023", "bytes, 1024..67108864"),
        ("SWITCH_MAX_PAYLOAD_BYTES", "1MiB", "bytes, 1024..67108864"),
        ("SWITCH_MAX_PAYLOAD_BYTES", "67108865", "bytes, 1024..67108864"),
        ("SWITCH_SHUTDOWN_GRACE", "-1", "seconds, 0..3600"),
        ("SWITCH_SHUTDOWN_GRACE", "3601", "seconds, 0..3600"),
        ("SWITCH_LOG_RETENTION", "0", "a duration such as 7d"),
        ("SWITCH_LOG_RETENTION", "-1d", "a duration such as 7d"),
        ("SWITCH_LOG_RETENTION", "d", "a duration such as 7d"),
        ("SWITCH_LOG_RETENTION", "week", "a duration such as 7d"),
        ("SWITCH_LOG_RETENTION", "7w", "a duration such as 7d"),
        ("SWITCH_LOG_RETENTION", "inf", "a duration such as 7d"),
        ("SWITCH_LOG_PAYLOADS", "on", "true|false"),
        ("SWITCH_LOG_PAYLOADS", "2", "true|false"),
        ("SWITCH_LOG_LEVEL", "verbose", "one of debug|info|warning|error|critical"),
        ("SWITCH_LOG_FORMAT", "xml", "one of auto|json|console"),
        ("SWITCH_CIRCUIT_FAILURES", "0", "an integer 1..1000"),
        ("SWITCH_CIRCUIT_FAILURES", "five", "an integer 1..1000"),
        ("SWITCH_CIRCUIT_COOLDOWN", "0", "seconds, 0.1..3600"),
        ("SWITCH_CIRCUIT_COOLDOWN", "5m", "seconds, 0.1..3600"),
        ("SWITCH_CIRCUIT_MAX_COOLDOWN", "86401", "seconds, 0.1..86400"),
        ("SWITCH_CIRCUIT_MAX_COOLDOWN", "2", "at least SWITCH_CIRCUIT_COOLDOWN (5 s)"),
        ("SWITCH_SET_ASIDE_MAX", "-1", "an integer 0..1000000"),
        ("SWITCH_SET_ASIDE_MAX", "1e3", "an integer 0..1000000"),
        ("SWITCH_ENDPOINT_MAX_IN_FLIGHT", "10001", "an integer 0..10000 (0: no fixed cap)"),
    ],
)
def test_bad_value_gives_one_line_naming_variable_and_form(
    variable: str, raw: str, expected_form: str
) -> None:
    problems = problems_of(env(**{variable: raw}))
    assert len(problems) == 1
    line = problems[0]
    assert line.startswith(variable)
    assert expected_form in line
    assert "\n" not in line


def test_bad_value_line_shows_value_and_expected_form() -> None:
    problems = problems_of(env(SWITCH_SERVER_PORT="abc"))
    assert problems == ["SWITCH_SERVER_PORT='abc' is invalid: expected an integer 0..65535"]


def test_several_bad_variables_give_several_lines() -> None:
    problems = problems_of(
        env(
            SWITCH_SERVER_PORT="99999",
            SWITCH_LOG_LEVEL="loud",
            SWITCH_RETRY_SCHEDULE="x",
            SWITCH_DELIVERY_TIMEOUT="-3",
            SWITCH_DB_NAME="ok.db",
        )
    )
    assert len(problems) == 4
    named = sorted(line.split("=", 1)[0] for line in problems)
    assert named == [
        "SWITCH_DELIVERY_TIMEOUT",
        "SWITCH_LOG_LEVEL",
        "SWITCH_RETRY_SCHEDULE",
        "SWITCH_SERVER_PORT",
    ]
    assert all("is invalid: expected" in line for line in problems)


def test_bad_values_and_missing_secret_are_all_reported() -> None:
    problems = problems_of({"SWITCH_SERVER_PORT": "x", "SWITCH_LOG_FORMAT": "yaml"})
    assert len(problems) == 3
    assert any(line.startswith("SWITCH_SERVER_PORT") for line in problems)
    assert any(line.startswith("SWITCH_LOG_FORMAT") for line in problems)
    assert any(line.startswith("SWITCH_JWT_SECRET") for line in problems)


def test_config_error_is_an_exception_with_problems() -> None:
    error = ConfigError(["A is bad", "B is bad"])
    assert isinstance(error, Exception)
    assert error.problems == ["A is bad", "B is bad"]
    assert str(error) == "A is bad\nB is bad"


# --- the secret -------------------------------------------------------------------------


def test_missing_secret_is_a_problem() -> None:
    problems = problems_of({})
    assert len(problems) == 1
    assert problems[0].startswith("SWITCH_JWT_SECRET")
    assert "required" in problems[0]


def test_empty_secret_is_a_problem_not_a_default() -> None:
    problems = problems_of({"SWITCH_JWT_SECRET": ""})
    assert len(problems) == 1
    assert problems[0].startswith("SWITCH_JWT_SECRET")


def test_blank_secret_is_reported_once() -> None:
    problems = problems_of({"SWITCH_JWT_SECRET": "  "})
    assert [p.split("=", 1)[0].split(" ", 1)[0] for p in problems] == ["SWITCH_JWT_SECRET"]


def test_secret_can_come_from_overrides() -> None:
    settings = load_settings({}, jwt_secret="from-override")
    assert settings.jwt_secret == "from-override"


def test_short_secret_is_accepted() -> None:
    # Under 32 bytes is only a start-up warning, not a configuration error.
    assert load_settings({"SWITCH_JWT_SECRET": "short"}).jwt_secret == "short"


# --- admin and previous secrets -----------------------------------------------------------

ADMIN = "a" * 40


def test_admin_and_previous_secrets_are_optional_and_read() -> None:
    settings = load_settings({"SWITCH_JWT_SECRET": SECRET})
    assert settings.admin_jwt_secret is None
    assert settings.jwt_secret_previous is settings.admin_jwt_secret_previous is None
    settings = load_settings(
        env(
            SWITCH_ADMIN_JWT_SECRET=f" {ADMIN} ",
            SWITCH_JWT_SECRET_PREVIOUS="old-publishers",
            SWITCH_ADMIN_JWT_SECRET_PREVIOUS="old-admins",
        )
    )
    assert settings.admin_jwt_secret == ADMIN  # stripped, like SWITCH_JWT_SECRET
    assert settings.jwt_secret_previous == "old-publishers"
    assert settings.admin_jwt_secret_previous == "old-admins"
    assert load_settings(env(SWITCH_ADMIN_JWT_SECRET="")).admin_jwt_secret is None


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"SWITCH_ADMIN_JWT_SECRET": SECRET}, ("SWITCH_ADMIN_JWT_SECRET", "SWITCH_JWT_SECRET")),
        ({"SWITCH_ADMIN_JWT_SECRET": f"  {SECRET} "}, ("SWITCH_ADMIN_JWT_SECRET",)),
        (
            {"SWITCH_ADMIN_JWT_SECRET": ADMIN, "SWITCH_JWT_SECRET_PREVIOUS": ADMIN},
            ("SWITCH_ADMIN_JWT_SECRET", "SWITCH_JWT_SECRET_PREVIOUS"),
        ),
        (
            {"SWITCH_ADMIN_JWT_SECRET": ADMIN, "SWITCH_ADMIN_JWT_SECRET_PREVIOUS": SECRET},
            ("SWITCH_ADMIN_JWT_SECRET_PREVIOUS", "SWITCH_JWT_SECRET"),
        ),
        ({"SWITCH_ADMIN_JWT_SECRET_PREVIOUS": ADMIN}, ("SWITCH_ADMIN_JWT_SECRET_PREVIOUS",)),
        ({"SWITCH_ADMIN_JWT_SECRET": "   "}, ("SWITCH_ADMIN_JWT_SECRET",)),
        ({"SWITCH_JWT_SECRET_PREVIOUS": " "}, ("SWITCH_JWT_SECRET_PREVIOUS",)),
    ],
)
def test_admin_secret_problems_are_one_line_each(values: dict[str, str], named: tuple) -> None:
    """An admin secret equal to a publisher one would let every publisher mint admin
    tokens: refused (compared as the server uses them, i.e. stripped)."""
    [problem] = problems_of(env(**values))
    assert problem.startswith(named[0] + " ") or problem.startswith(named[0] + "=")
    assert all(name in problem for name in named), problem


# --- retry schedule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("5,300,1800", (5.0, 300.0, 1800.0)),
        ("10", (10.0,)),
        ("0.5,1.25,2", (0.5, 1.25, 2.0)),
        (" 1 , 2 , 3 ", (1.0, 2.0, 3.0)),
        ("1,2,", (1.0, 2.0)),
        ("0", (0.0,)),
        ("2592000", (2_592_000.0,)),
        ("1e2", (100.0,)),
    ],
)
def test_retry_schedule_parsing(raw: str, expected: tuple[float, ...]) -> None:
    schedule = load_settings(env(SWITCH_RETRY_SCHEDULE=raw)).retry_schedule
    assert schedule == expected
    assert all(isinstance(v, float) for v in schedule)


@pytest.mark.parametrize(
    "raw",
    [",", " , ", "5;300", "5,,x", "-1", "5,-5", "2592001", "nan", "inf", "1,inf", "five", "5 min"],
)
def test_bad_retry_schedule(raw: str) -> None:
    problems = problems_of(env(SWITCH_RETRY_SCHEDULE=raw))
    assert len(problems) == 1
    assert problems[0].startswith("SWITCH_RETRY_SCHEDULE=")
    assert "comma-separated seconds" in problems[0]


# --- lease vs timeout -------------------------------------------------------------------


def test_lease_must_exceed_the_default_delivery_timeout() -> None:
    problems = problems_of(env(SWITCH_LEASE_SECONDS="10"))
    assert problems == [
        "SWITCH_LEASE_SECONDS=10 is invalid: expected more than the worst-case delivery "
        "(55 s = attempts × timeout + quick-retry waits)"
    ]


def test_lease_equal_to_timeout_is_rejected() -> None:
    problems = problems_of(env(SWITCH_LEASE_SECONDS="20", SWITCH_DELIVERY_TIMEOUT="20"))
    assert len(problems) == 1
    assert problems[0].startswith("SWITCH_LEASE_SECONDS")


def test_lease_against_a_configured_timeout() -> None:
    problems = problems_of(env(SWITCH_LEASE_SECONDS="60", SWITCH_DELIVERY_TIMEOUT="90"))
    assert len(problems) == 1
    assert problems[0].startswith("SWITCH_LEASE_SECONDS")
    ok = load_settings(env(SWITCH_LEASE_SECONDS="60", SWITCH_DELIVERY_TIMEOUT="5"))  # worst 25 s
    assert ok.lease_seconds == 60.0
    assert ok.effective_lease == 60.0


def test_cross_check_is_reported_alongside_other_problems() -> None:
    problems = problems_of(env(SWITCH_LEASE_SECONDS="5", SWITCH_LOG_LEVEL="nope"))
    assert sorted(p.split("=", 1)[0] for p in problems) == [
        "SWITCH_LEASE_SECONDS",
        "SWITCH_LOG_LEVEL",
    ]


def test_effective_lease_is_derived_from_delivery_bounds() -> None:
    settings = load_settings(env())
    # 3 attempts x 15 s + 2 waits x 5 s = 55 s worst case; lease = 55 + 30.
    assert settings.worst_case_delivery == 55.0
    assert settings.effective_lease == 85.0
    short = load_settings(
        env(SWITCH_DELIVERY_TIMEOUT="1", SWITCH_QUICK_RETRIES="0", SWITCH_QUICK_RETRY_MAX_WAIT="0")
    )
    assert short.worst_case_delivery == 1.0
    assert short.effective_lease == 60.0


def test_faktory_url_port_out_of_range_is_rejected() -> None:
    problems = problems_of(env(FAKTORY_URL="tcp://localhost:99999"))
    assert len(problems) == 1
    assert problems[0].startswith("FAKTORY_URL")


def test_faktory_url_accepts_ipv6_and_tls() -> None:
    assert load_settings(env(FAKTORY_URL="tcp://[::1]:7419")).faktory_url == "tcp://[::1]:7419"
    assert load_settings(env(FAKTORY_URL="tcp+tls://:pw@host:7419")).faktory_url


def test_faktory_password_is_not_echoed_in_errors() -> None:
    [problem] = problems_of(env(FAKTORY_URL="tcp://:hunter2@host:notaport"))
    assert "hunter2" not in problem and "***" in problem


def test_lease_must_outlast_the_worst_case_delivery() -> None:
    [problem] = problems_of(env(SWITCH_LEASE_SECONDS="20"))  # worst case is 55 s by default
    assert problem.startswith("SWITCH_LEASE_SECONDS") and "55" in problem


def test_every_variable_is_in_the_readme_table_and_the_example_file() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    example = (root / "config" / "switchd.env.example").read_text()
    missing = [n for n in VARIABLES if f"| `{n}` |" not in readme or f"{n}=" not in example]
    assert missing == []
