"""The OpenAPI 3.1 document served at `GET /openapi.json` (DESIGN §4).

Built as a plain dict from small helpers so each route reads as one short table entry.
Limits come from the modules that enforce them, so the document cannot drift from them.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import orjson

from switchd.endpoints import CIRCUITS
from switchd.event_queries import STATES, STATUSES
from switchd.filters import MAX_EXPRESSION_LENGTH
from switchd.http_input import MAX_ADMIN_BODY, MAX_ID_DIGITS, MAX_IMPORT_BODY
from switchd.idempotency import KEY_CHARS, MAX_KEY_LENGTH
from switchd.models import ATTEMPT_KINDS
from switchd.overview import BUCKET_SECONDS, DEFAULT_MINUTES, MAX_MINUTES, SERIES
from switchd.pagination import DEFAULT_PAGE, MAX_PAGE
from switchd.payload import (
    CONTROL_RANGES,
    CONTROL_RANGES_BUT_TAB,
    EXACT_INTEGERS,
    HEADER_NAME,
    HTTP_METHODS,
    MAX_DEPTH,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_TOPIC_LENGTH,
)
from switchd.probe import SAMPLE_PAYLOAD
from switchd.subscribers import (
    MAX_DESCRIPTION_LENGTH,
    MAX_IMPORT_ENTRIES,
    MAX_URL_LENGTH,
    SECRET_PREFIX,
)

Schema = dict[str, Any]

NO_CONTROL_CHARS = f"^[^{CONTROL_RANGES}]*$"
NO_CONTROL_CHARS_BUT_TAB = f"^[^{CONTROL_RANGES_BUT_TAB}]*$"
OUTCOMES = ATTEMPT_KINDS  # of one HTTP attempt

ADMIN_NOTE = (
    "**Admin only**: needs an admin token (signed with `SWITCH_ADMIN_JWT_SECRET`, `scope` "
    "holding `admin`); 403 for any other valid token, and for every call while that "
    "variable is unset."
)
ANY_TOKEN_NOTE = (
    "A publisher token (the seed SDKs' tokens, with only an `Author` claim, work) or an "
    "admin token."
)
SECURITY = {  # operation() `auth` -> the schemes that satisfy it (any one of them)
    None: [],
    "token": [{"publisherToken": []}, {"adminToken": []}],
    "admin": [{"adminToken": []}],
}
ADMIN_BODY_NOTE = f"Body limit {MAX_ADMIN_BODY} bytes (413 above it)."

INTRO = """\
switchd accepts events published on a topic and delivers each one durably over HTTP to
every enabled subscriber of that topic whose filter matches.

**Auth**: `Authorization: Bearer <JWT>` (the scheme is case-insensitive), HS256; `exp`/`nbf`
are checked when present; the author is the claim `author` or `Author`. Two kinds of
token (see `securitySchemes`): *publisher tokens*, signed with `SWITCH_JWT_SECRET`, may
publish and refresh, and never manage, whatever their claims; *admin tokens*, signed with
the separate `SWITCH_ADMIN_JWT_SECRET` and whose `scope` claim (a space-separated string
or a list) holds `admin`, may do everything. While `SWITCH_ADMIN_JWT_SECRET` is unset,
every management operation answers 403 `admin_not_configured` (`GET /auth` says so
without a token). During a rotation, tokens signed with `SWITCH_JWT_SECRET_PREVIOUS` /
`SWITCH_ADMIN_JWT_SECRET_PREVIOUS` verify too. An optional `topics` claim (a list of
topic names or `prefix.*` patterns) limits where a token may publish; it is not a list
of strings (or holds an invalid entry): the token is invalid. A missing or invalid token
gets 401 with `WWW-Authenticate: Bearer`; a valid token that may not do what it asks
gets 403.

**Errors** are always JSON: `{"error": {"code": "...", "message": "..."}}`. An unknown
path gets 404 `not_found`; a method a path does not support gets 405
`method_not_allowed` with an `Allow` header; an unexpected fault gets 500
`internal_error` (a bug: please report it).

Every GET path also answers HEAD (same status and headers, no body).
"""


# --- small builders -------------------------------------------------------------------


def ref(name: str, kind: str = "schemas") -> Schema:
    """A `$ref` to a component."""
    return {"$ref": f"#/components/{kind}/{name}"}


def obj(
    properties: dict[str, Schema],
    required: tuple[str, ...] | None = None,
    closed: bool = True,
    **extra: Any,
) -> Schema:
    """An object schema; every property is required unless `required` says otherwise."""
    schema: Schema = {
        "type": "object",
        "properties": properties,
        "required": list(properties if required is None else required),
        **extra,
    }
    if closed:
        schema["additionalProperties"] = False
    return schema


def string(description: str = "", **extra: Any) -> Schema:
    """A string schema."""
    return {"type": "string", **({"description": description} if description else {}), **extra}


def nullable(schema: Schema) -> Schema:
    """`schema` or null (JSON Schema 2020-12 style, as OpenAPI 3.1 uses)."""
    kind = schema["type"]
    return {**schema, "type": [*(kind if isinstance(kind, list) else [kind]), "null"]}


def timestamp(description: str) -> Schema:
    """Seconds since the Unix epoch."""
    return {"type": "number", "description": f"{description} (Unix time, seconds)"}


def any_case(words: tuple[str, ...]) -> str:
    """A pattern matching any of `words` in any letter case (ECMA regexes lack `(?i)`)."""
    spelled = ("".join(f"[{c.upper()}{c.lower()}]" for c in word) for word in words)
    return "^(" + "|".join(spelled) + ")$"


def json_content(schema: Schema) -> dict[str, Any]:
    """A JSON media type map."""
    return {"application/json": {"schema": schema}}


def response(description: str, schema: Schema | None = None, **headers: Schema) -> Schema:
    """A response object; `schema` is its JSON body, `headers` its documented headers."""
    answer: Schema = {"description": description}
    if schema is not None:
        answer["content"] = json_content(schema)
    if headers:
        answer["headers"] = headers
    return answer


def header(description: str, schema: Schema, required: bool = False) -> Schema:
    """A header object (for responses and parameters alike)."""
    return {"description": description, "required": required, "schema": schema}


def error_response(description: str, codes: tuple[str, ...], **headers: Schema) -> Schema:
    """An error response: the Error body, its possible codes named in the description."""
    listed = ", ".join(f"`{code}`" for code in codes)
    return response(f"{description} Codes: {listed}.", ref("Error"), **headers)


def param(name: str, where: str, schema: Schema, description: str, **extra: Any) -> Schema:
    """A parameter object."""
    return {"name": name, "in": where, "schema": schema, "description": description, **extra}


def query(name: str, schema: Schema, description: str) -> Schema:
    """An optional query parameter."""
    return param(name, "query", schema, description, required=False)


def body(schema: Schema, description: str) -> Schema:
    """A required JSON request body (Content-Type is not checked by the server)."""
    return {"required": True, "description": description, "content": json_content(schema)}


def operation(
    operation_id: str,
    summary: str,
    tag: str,
    auth: str | None,
    responses: dict[str, Schema],
    errors: tuple[int, ...] = (),
    description: str = "",
    **extra: Any,
) -> Schema:
    """An operation; `auth` is None, "token" (either kind) or "admin" and adds the 401/403
    answers."""
    notes = {None: "No authentication.", "token": ANY_TOKEN_NOTE, "admin": ADMIN_NOTE}[auth]
    statuses = {*errors, 500}
    if auth:
        statuses.add(401)
    if auth == "admin":
        statuses.add(403)
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": f"{description}\n\n{notes}".strip(),
        "tags": [tag],
        "security": SECURITY[auth],
        **extra,
        "responses": {
            **responses,
            **{str(status): ref(str(status), "responses") for status in sorted(statuses)},
        },
    }


# --- components -----------------------------------------------------------------------


def scalar() -> Schema:
    """What headers, path and query parameters hold."""
    return {"type": ["string", "number", "boolean", "null"]}


def topic_schema() -> Schema:
    """A topic, as `payload.validate_topic` accepts it."""
    return string(
        f"1..{MAX_TOPIC_LENGTH} characters, no control characters and no Unicode format "
        "characters (category Cf, e.g. bidi controls).",
        minLength=1,
        maxLength=MAX_TOPIC_LENGTH,
        pattern=NO_CONTROL_CHARS,
    )


def publish_payload() -> Schema:
    """The event payload: how to deliver it, plus any fields filters may look at."""
    low, high = EXACT_INTEGERS
    header_value = {
        "anyOf": [
            string(maxLength=MAX_HEADER_VALUE, pattern=NO_CONTROL_CHARS_BUT_TAB),
            {"type": ["number", "boolean", "null"]},
        ],
        "description": "A scalar; strings must not hold control characters (CR/LF) but tab.",
    }
    return obj(
        {
            "body": {"description": "Any JSON: the body the subscriber receives."},
            "headers": nullable(
                {
                    "type": "object",
                    "description": "Headers added to the delivery (names are HTTP tokens).",
                    "maxProperties": MAX_HEADERS,
                    "propertyNames": string(pattern=f"^({HEADER_NAME.pattern})$"),
                    "additionalProperties": header_value,
                }
            ),
            "query_params": nullable(
                {
                    "type": "object",
                    "description": "Query parameters added to the target URL.",
                    "additionalProperties": {
                        "anyOf": [scalar(), {"type": "array", "items": scalar()}]
                    },
                }
            ),
            "path_params": nullable(
                {
                    "type": "object",
                    "description": "Values for `:name` placeholders in the target URL.",
                    "additionalProperties": scalar(),
                }
            ),
            "http_method": nullable(
                string(
                    f"Delivery method, any letter case: {', '.join(HTTP_METHODS)}. Default POST. "
                    "Filters see it as published; the delivery request uses it upper-cased.",
                    pattern=any_case(HTTP_METHODS),
                )
            ),
        },
        required=(),
        closed=False,
        description=(
            f"Nested at most {MAX_DEPTH} levels; integers within {low}..{high} (others would "
            "be read as another number). Filters see the payload exactly as published; other "
            "fields are kept and visible to them."
        ),
    )


def payload_forms() -> list[Schema]:
    """A payload as `/publish` takes it: the object, or base64 of its JSON."""
    return [
        ref("PublishPayload"),
        string(
            "Base64 (standard alphabet) of a JSON object with the "
            "PublishPayload fields: what the seed SDKs send.",
            contentEncoding="base64",
            contentMediaType="application/json",
        ),
    ]


def publish_request() -> Schema:
    """The `/publish` body (seed-compatible)."""
    return obj(
        {
            "topic": topic_schema(),
            "payload": {"oneOf": payload_forms()},
        },
        closed=False,
        description=(
            "Keys are matched case-insensitively: the seed SDKs send `Topic` and `Payload`. "
            "A key given twice in different cases (e.g. `Topic` and `topic`) is refused "
            "(400 `invalid_json`). Other keys are ignored."
        ),
    )


def subscriber_fields() -> dict[str, Schema]:
    """The editable subscriber fields as create and update accept them."""
    return {
        "topic": topic_schema(),
        "target_url": string(
            "Absolute http:// or https:// URL with a host; ASCII only (percent-encode the "
            "path, punycode the host), no whitespace or control characters. `:name` "
            "segments are filled from the payload's `path_params`.",
            format="uri",
            minLength=1,
            maxLength=MAX_URL_LENGTH,
            pattern="^[Hh][Tt][Tt][Pp][Ss]?://[!-~]+$",
        ),
        "filter_expression": nullable(
            string(
                "A filter over the payload (DESIGN §5); it must compile, else 400 "
                "`invalid_filter` naming the error. Null or blank means `True`.",
                maxLength=MAX_EXPRESSION_LENGTH,
            )
        ),
        "enabled": {"type": "boolean", "description": "Re-enabling clears `disabled_reason`."},
        "secret": {
            "description": (
                "Signing secret (Standard Webhooks): `true` generates one, `null` or `false` "
                f"removes it, or a `{SECRET_PREFIX}` + base64 string of 24..64 bytes. "
                "Shown only in the response to the request that set it."
            ),
            "anyOf": [
                {"type": ["boolean", "null"]},
                string(pattern=f"^{SECRET_PREFIX}[A-Za-z0-9+/]+={{0,2}}$"),
            ],
        },
        "description": string(maxLength=MAX_DESCRIPTION_LENGTH),
    }


def subscriber(with_endpoint: bool = False) -> Schema:
    """A subscriber as the API shows it; `secret` only in the answer that set it; its
    endpoint's state when shown alone."""
    properties: dict[str, Schema] = {
        "id": string(format="uuid"),
        "topic": topic_schema(),
        "target_url": string(),
        "filter_expression": string(),
        "enabled": {"type": "boolean"},
        "disabled_reason": nullable(string("Why switchd turned it off, if it did.")),
        "has_secret": {"type": "boolean"},
        "description": string(),
        "created_at": timestamp("Creation time"),
        "updated_at": timestamp("Last change"),
    }
    if with_endpoint:
        properties["endpoint"] = ref("Endpoint")
    required = tuple(properties)
    properties["secret"] = nullable(string("The signing secret, shown once."))
    return obj(properties, required=required)


def endpoint() -> Schema:
    """An endpoint's isolation state (`GET /endpoints`)."""
    count = {"type": "integer", "minimum": 0}
    return obj(
        {
            "origin": string("`scheme://host:port` of subscriber targets."),
            "limit": {**count, "minimum": 1, "description": "Requests it may have in flight now."},
            "ceiling": {**count, "minimum": 1, "description": "The highest (and first) limit."},
            "in_flight": {**count, "description": "Deliveries to it under way."},
            "set_aside": {**count, "description": "Jobs held in memory until it can take them."},
            "circuit": string(
                "`open`: no request goes out until `next_probe_at`; `half_open`: one probe is out.",
                enum=list(CIRCUITS),
            ),
            "circuit_since": timestamp("When the circuit last left or came back to closed"),
            "consecutive_failures": count,
            "next_probe_at": nullable(timestamp("While open: when the probe may go")),
            "paused_until": nullable(timestamp("The end of a pause `Retry-After` asked for")),
            "latency_ms": nullable({"type": "number", "minimum": 0, "description": "Average."}),
            "last_error": nullable(string()),
            "last_error_at": nullable(timestamp("When the last error came")),
            "last_used_at": timestamp("The last delivery to it began"),
        },
        description="Endpoint isolation: an adaptive in-flight limit, pauses and a circuit "
        "breaker per target origin.",
    )


def subscriber_imported() -> Schema:
    """The answer to an import."""
    count = {"type": "integer", "minimum": 0}
    return obj(
        {
            "ids": {
                "type": "array",
                "items": string(format="uuid"),
                "description": "One per entry, in order: the new subscriber's id, or the "
                "existing identical one's.",
            },
            "created": count,
            "skipped": count,
            "secrets": {
                "type": "object",
                "additionalProperties": string(),
                "description": "The signing secret of each created subscriber that has one, "
                "by id; shown this once.",
            },
        }
    )


def dead_letter(with_payload: bool) -> Schema:
    """A dead letter: a delivery that failed for good (with its payload when shown alone)."""
    properties: dict[str, Schema] = {
        "id": {"type": "integer"},
        "event_id": string(),
        "subscriber_id": nullable(string()),
        "topic": string(),
        "author": string(),
        "target_url": string(),
        "filter_expression": string(),
        "attempts": {"type": "integer", "description": "HTTP requests made in all."},
        "last_status": nullable({"type": "integer", "description": "Last HTTP status, if any."}),
        "last_error": nullable(string()),
        "first_attempt_at": nullable(timestamp("First attempt")),
        "last_attempt_at": nullable(timestamp("Last attempt")),
        "dead_at": timestamp("When it was declared dead"),
        "replayed_at": nullable(timestamp("Last replay; null if never replayed")),
    }
    if with_payload:
        properties["payload"] = {"type": "object", "description": "The event payload."}
    return obj(properties)


def dead_filter_fields() -> dict[str, Schema]:
    """Filters shared by `GET /dead` (query) and `POST /dead/replay` (body)."""
    return {
        "subscriber_id": string("Only this subscriber's dead letters."),
        "topic": string("Only this topic's dead letters."),
        "event_id": string("Only this event's dead letters."),
        "replayed": {"type": "boolean", "description": "Only replayed (true) or not (false)."},
    }


def bulk_replay_request() -> Schema:
    """The `POST /dead/replay` body: the `GET /dead` filters, null meaning absent."""
    fields = {name: nullable(schema) for name, schema in dead_filter_fields().items()}
    fields["replayed"] = {
        "anyOf": [fields["replayed"], string(pattern=any_case(("true", "false")))],
        "description": "Default false: only dead letters never replayed.",
    }
    return obj(
        fields,
        required=(),
        closed=False,
        anyOf=[{"required": ["subscriber_id"]}, {"required": ["topic"]}],
        description="Give `subscriber_id` or `topic` (or both); other keys are ignored.",
    )


STATUS_NOTE = (
    "The event's fate, the worst of its subscribers' states: `dead` (a dead letter not "
    "replayed), `failed` (attempts failed, none succeeded yet: a retry or replay is due; "
    "final for a test), `pending` (not attempted yet), `delivered`, `skipped` (every "
    "subscriber was deleted before a delivery); `unmatched` when it matched nobody."
)
STATE_NOTE = (
    "`delivered`: an attempt succeeded. `dead`: a dead letter (`dead_letter_id`) not "
    "replayed. `skipped`: the subscriber was deleted before a delivery. `failed`: attempts "
    "failed, none succeeded yet (`next_retry_at` when a durable retry is scheduled at a "
    "known time). `pending`: not attempted yet."
)


def logged_event_fields() -> dict[str, Schema]:
    """What the delivery log shows of every event."""
    return {
        "id": string("The event id `/publish` answered."),
        "topic": string(),
        "author": string("The author of the publishing token."),
        "received_at": timestamp("When it was accepted"),
        "payload_size": {
            "type": "integer",
            "minimum": 0,
            "description": "Bytes of the payload's JSON.",
        },
        "matched": {
            "type": "array",
            "items": string(),
            "description": "Ids of the subscribers it matched when published.",
        },
        "test": {"type": "boolean", "description": "A test delivery, not a publish."},
        "status": string(STATUS_NOTE, enum=list(STATUSES)),
    }


def attempt() -> Schema:
    """One HTTP request of a delivery."""
    return obj(
        {
            "attempt": {
                "type": "integer",
                "minimum": 1,
                "description": "Its number among the requests of this delivery job.",
            },
            "at": timestamp("When the request started"),
            "duration_ms": {"type": "number", "minimum": 0},
            "status": nullable(
                {"type": "integer", "description": "HTTP status; null when none came."}
            ),
            "outcome": string(
                "`transient` (connection error, timeout, 408, 425, 429, 5xx) is retried; "
                "`permanent` (3xx, other 4xx) is not.",
                enum=list(OUTCOMES),
            ),
            "error": nullable(string()),
            "next_retry_at": nullable(
                timestamp(
                    "When the durable retry this request led to is due (the local queue's "
                    "schedule; null under Faktory, whose own backoff decides)"
                )
            ),
        }
    )


def event_detail() -> Schema:
    """One logged event with its payload (when kept) and its fate per subscriber."""
    subscriber_state = obj(
        {
            "subscriber_id": string(),
            "state": string(STATE_NOTE, enum=list(STATES)),
            "next_retry_at": nullable(timestamp("When the next durable retry is due")),
            "dead_letter_id": nullable({"type": "integer", "description": "See `/dead/{id}`."}),
            "attempts": {"type": "array", "items": ref("Attempt"), "description": "In order."},
        }
    )
    return obj(
        {
            **logged_event_fields(),
            "payload": nullable(
                {
                    "type": "object",
                    "description": "Shown only with `SWITCH_LOG_PAYLOADS=true`.",
                }
            ),
            "subscribers": {
                "type": "array",
                "items": subscriber_state,
                "description": "One entry per matched subscriber, in `matched` order.",
            },
        }
    )


def stats_window() -> Schema:
    """A subscriber's attempts over one time window."""
    count = {"type": "integer", "minimum": 0}
    latency = nullable({"type": "number", "minimum": 0, "description": "Milliseconds."})
    return obj(
        {
            "attempts": count,
            "delivered": count,
            "failed": count,
            "success_rate": nullable(
                {"type": "number", "minimum": 0, "maximum": 1, "description": "null: none."}
            ),
            "p50_ms": latency,
            "p99_ms": latency,
        }
    )


def subscriber_stats() -> Schema:
    """`GET /subscribers/{id}/stats`."""
    last_error = obj(
        {
            "at": timestamp("When the request started"),
            "event_id": string(),
            "attempt": {"type": "integer"},
            "status": nullable({"type": "integer"}),
            "outcome": string(enum=list(OUTCOMES[1:])),
            "error": nullable(string()),
        }
    )
    return obj(
        {
            "subscriber_id": string(),
            "last_hour": ref("StatsWindow"),
            "last_day": ref("StatsWindow"),
            "last_error": nullable({**last_error, "description": "The last failed attempt."}),
        }
    )


def subscriber_test() -> Schema:
    """`POST /subscribers/{id}/test` body."""
    sample = orjson.dumps(SAMPLE_PAYLOAD).decode()
    return obj(
        {
            "payload": {
                "anyOf": [*payload_forms(), {"type": "null"}],
                "description": f"The sample (as `/publish` takes it); default `{sample}`.",
            },
            "deliver": nullable(
                {
                    "type": "boolean",
                    "description": "Also send it, once, if the filter matches (default false).",
                }
            ),
        },
        required=(),
    )


def subscriber_test_result() -> Schema:
    """`POST /subscribers/{id}/test` answer."""
    delivery = obj(
        {
            "event_id": string("The test event's id in the delivery log."),
            "outcome": string(enum=list(OUTCOMES)),
            "status": nullable({"type": "integer", "description": "HTTP status, if any."}),
            "error": nullable(string()),
            "duration_ms": {"type": "number", "minimum": 0},
        }
    )
    return obj(
        {
            "match": {"type": "boolean", "description": "Whether the filter accepts the sample."},
            "error": nullable(string("Why the filter failed on the sample (counts as no match).")),
            "delivery": nullable({**delivery, "description": "The test delivery, if sent."}),
        }
    )


def filter_check() -> Schema:
    """`POST /filters/check` body."""
    return obj(
        {
            "expression": string(
                f"A filter expression (DESIGN §5). One that does not compile (e.g. longer "
                f"than {MAX_EXPRESSION_LENGTH} characters) is answered `valid: false`."
            ),
            "data": {
                **ref("PublishPayload"),
                "description": "The sample payload `data` stands for; default `{}`.",
            },
        },
        required=("expression",),
    )


def filter_check_result() -> Schema:
    """`POST /filters/check` answer."""
    return obj(
        {
            "valid": {"type": "boolean", "description": "Whether the expression compiles."},
            "matches": nullable(
                {
                    "type": "boolean",
                    "description": "Whether it accepts the sample; null when not valid.",
                }
            ),
            "error": nullable(
                string("Why it does not compile, or why evaluating it failed (no match).")
            ),
        }
    )


def overview() -> Schema:
    """`GET /overview` answer."""
    count = {"type": "integer", "minimum": 0}
    per_minute = {"type": "array", "items": count, "description": "Oldest minute first."}
    names = tuple(SERIES)
    return obj(
        {
            "now": timestamp("Server time of this answer"),
            "start": timestamp("Start of the first bucket (a whole minute)"),
            "bucket_seconds": {"type": "integer", "enum": [BUCKET_SECONDS]},
            "series": obj(
                dict.fromkeys(names, per_minute),
                description="`published`: events accepted (test deliveries excluded); "
                "`delivered`, `failed`: HTTP attempts by outcome (failed: transient or "
                "permanent); `dead`: dead letters created. The last bucket is the current, "
                "partial minute.",
            ),
            "totals": obj(dict.fromkeys(names, count), description="Sums over the window."),
            "queue": obj(
                {
                    "backend": string(enum=["local", "faktory"]),
                    "depth": {
                        **count,
                        "description": "Jobs waiting or in flight in switchd's own queue "
                        "(under Faktory: jobs spilled there while Faktory was down).",
                    },
                    "oldest_age_seconds": nullable(
                        {
                            "type": "number",
                            "minimum": 0,
                            "description": "Age of the oldest of those jobs' events.",
                        }
                    ),
                },
                required=("backend", "depth", "oldest_age_seconds"),
                closed=False,
                description="With Faktory also its state, as `/readyz` shows it.",
            ),
            "ready": {"type": "boolean", "description": "What `/readyz` would answer."},
            "reasons": {"type": "array", "items": string(), "description": "Why not ready."},
        }
    )


def status_body(*statuses: str, reasons: bool = False) -> Schema:
    """`{"status": ...}` bodies of the operations endpoints."""
    properties: dict[str, Schema] = {"status": string(enum=list(statuses))}
    if reasons:
        properties["reasons"] = {"type": "array", "items": string()}
        properties["queue"] = obj(
            {"backend": string(enum=["local", "faktory"])},
            closed=False,
            description="The queue backend; with Faktory also its state (up/down, since "
            "when, last error, worker state, jobs pushed, PUSHBs sent, jobs spilled, unsent "
            "ACK/FAILs).",
        )
    return obj(properties, required=("status",))


def schemas() -> dict[str, Schema]:
    """Every named schema."""
    return {
        "Error": obj(
            {
                "error": obj(
                    {
                        "code": string("Stable, machine-readable, e.g. `invalid_topic`."),
                        "message": string("For people."),
                    }
                )
            }
        ),
        "PublishRequest": publish_request(),
        "PublishPayload": publish_payload(),
        "PublishAccepted": obj(
            {
                "event_id": string(format="uuid"),
                "topic": string(),
                "matched": {"type": "integer", "minimum": 0},
                "subscribers": {
                    "type": "array",
                    "items": string(),
                    "description": "Ids of the subscribers the event will be delivered to.",
                },
            }
        ),
        "Subscriber": subscriber(),
        "SubscriberCreate": obj(subscriber_fields(), required=("topic", "target_url")),
        "SubscriberUpdate": obj(subscriber_fields(), required=()),
        "SubscriberList": obj({"subscribers": {"type": "array", "items": ref("Subscriber")}}),
        "SubscriberWithEndpoint": subscriber(with_endpoint=True),
        "Endpoint": endpoint(),
        "EndpointList": obj(
            {
                "endpoints": {
                    "type": "array",
                    "items": ref("Endpoint"),
                    "description": "Worst first.",
                },
                "set_aside": {"type": "integer", "minimum": 0, "description": "Jobs held, in all."},
                "set_aside_max": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "`SWITCH_SET_ASIDE_MAX`: beyond it, jobs go back to the queue.",
                },
            }
        ),
        "SubscriberImport": {
            "type": "array",
            "items": ref("SubscriberCreate"),
            "maxItems": MAX_IMPORT_ENTRIES,
            "description": "New subscribers, as `switchd subscribers import` reads them.",
        },
        "SubscriberImported": subscriber_imported(),
        "DeadLetter": dead_letter(with_payload=False),
        "DeadLetterWithPayload": dead_letter(with_payload=True),
        "DeadLetterPage": obj(
            {
                "dead_letters": {"type": "array", "items": ref("DeadLetter")},
                "next_cursor": nullable(
                    {"type": "integer", "description": "Pass as `cursor`; null on the last page."}
                ),
            }
        ),
        "BulkReplayRequest": bulk_replay_request(),
        "LoggedEvent": obj(logged_event_fields()),
        "EventPage": obj(
            {
                "events": {"type": "array", "items": ref("LoggedEvent")},
                "next_cursor": nullable(
                    {"type": "integer", "description": "Pass as `cursor`; null on the last page."}
                ),
            }
        ),
        "Attempt": attempt(),
        "EventDetail": event_detail(),
        "StatsWindow": stats_window(),
        "SubscriberStats": subscriber_stats(),
        "SubscriberTest": subscriber_test(),
        "SubscriberTestResult": subscriber_test_result(),
        "FilterCheck": filter_check(),
        "FilterCheckResult": filter_check_result(),
        "Overview": overview(),
        "Health": status_body("ok"),
        "AuthStatus": obj(
            {
                "admin_configured": {
                    "type": "boolean",
                    "description": "Whether `SWITCH_ADMIN_JWT_SECRET` is set.",
                },
                "message": string("What management calls need, or why they are refused."),
            }
        ),
        "Readiness": status_body("ready", "unavailable", reasons=True),
    }


def error_responses() -> dict[str, Schema]:
    """The shared error answers, keyed by status."""
    return {
        "400": error_response(
            "Malformed input; nothing was changed.",
            (
                "invalid_json",
                "invalid_request",
                "invalid_topic",
                "invalid_payload",
                "invalid_header",
                "invalid_filter",
                "invalid_idempotency_key",
            ),
        ),
        "401": error_response(
            "Missing or invalid token.",
            ("unauthorized",),
            **{"WWW-Authenticate": header("Always `Bearer`.", string(enum=["Bearer"]), True)},
        ),
        "403": error_response(
            "Not an admin token (a publisher token, or no `admin` scope), or "
            "`SWITCH_ADMIN_JWT_SECRET` is unset on this server; nothing was changed.",
            ("forbidden", "admin_not_configured"),
        ),
        "403Topic": error_response(
            "The token's `topics` claim does not allow this topic; nothing was stored (no "
            "job, no delivery-log entry, no Idempotency-Key).",
            ("topic_not_allowed",),
        ),
        "404": error_response("No such resource.", ("not_found",)),
        "405": error_response(
            "The path does not support this method.",
            ("method_not_allowed",),
            Allow=header("The methods the path supports.", string(), True),
        ),
        "409": error_response(
            "The request conflicts with the resource's state.", ("replay_refused",)
        ),
        "413": error_response("The body is larger than the limit.", ("payload_too_large",)),
        "422": error_response(
            "The Idempotency-Key was used with a different request in the last 24 h.",
            ("idempotency_key_reused",),
        ),
        "500": error_response("An unexpected fault (a bug).", ("internal_error",)),
        "503": error_response(
            "No queue could store the jobs; nothing was stored. Retry later.",
            ("queue_unavailable",),
        ),
    }


# --- paths ----------------------------------------------------------------------------


def publish_paths() -> dict[str, Schema]:
    """`/publish` and `/refresh`."""
    return {
        "/publish": {
            "post": operation(
                "publish",
                "Publish an event",
                "publishing",
                "token",
                {
                    "403": ref("403Topic", "responses"),
                    "202": response(
                        "Accepted: every job is durably stored.",
                        ref("PublishAccepted"),
                        **{
                            "Idempotent-Replayed": header(
                                "`true` when this is the stored answer to an earlier request "
                                "with the same Idempotency-Key.",
                                string(enum=["true"]),
                            )
                        },
                    ),
                },
                errors=(400, 413, 422, 503),
                description=(
                    "Matches the topic's enabled subscribers and stores one delivery job "
                    "each. Content-Type is not required. The body limit is "
                    "`SWITCH_MAX_PAYLOAD_BYTES` (default 1 MiB; 413 above it). A token "
                    "with a `topics` claim may publish only to the topics it lists: an "
                    "exact name, or `prefix.*`, which matches `prefix.` followed by at "
                    "least one character (`orders.*` matches `orders.created`, not "
                    "`orders` nor `ordersX`); 403 `topic_not_allowed` otherwise."
                ),
                parameters=[
                    param(
                        "Idempotency-Key",
                        "header",
                        string(minLength=1, maxLength=MAX_KEY_LENGTH, pattern=f"^[{KEY_CHARS}]*$"),
                        "The same key from the same author within 24 h returns the first "
                        "answer again (with `Idempotent-Replayed: true`) and enqueues "
                        "nothing; with a different request it gets 422. 1..255 printable "
                        "ASCII characters, else 400. The key is stored with the event's jobs "
                        "(all or nothing); under Faktory a retry after a crash mid-publish "
                        "gets the first event id, its jobs pushed again (README).",
                        required=False,
                    )
                ],
                requestBody=body(ref("PublishRequest"), "The event."),
            )
        },
        "/refresh": {
            "get": operation(
                "refresh",
                "Reload subscribers now",
                "publishing",
                "token",
                description="A `topics` claim does not matter here.",
                responses={
                    "200": response(
                        "The number of subscribers loaded.",
                        obj({"subscribers": {"type": "integer", "minimum": 0}}),
                    )
                },
            )
        },
    }


def subscriber_paths() -> dict[str, Schema]:
    """`/subscribers` and `/subscribers/{id}`."""
    by_id = [param("id", "path", string(), "Subscriber id.", required=True)]
    imported = ref("SubscriberImported")
    return {
        "/subscribers": {
            "get": operation(
                "listSubscribers",
                "List subscribers",
                "subscribers",
                "admin",
                {"200": response("Every subscriber, oldest first.", ref("SubscriberList"))},
                parameters=[query("topic", string(), "Only this topic's subscribers.")],
            ),
            "post": operation(
                "createSubscriber",
                "Create a subscriber",
                "subscribers",
                "admin",
                {"201": response("Created; `secret` is shown this once.", ref("Subscriber"))},
                errors=(400, 413),
                description=f"Unknown fields are refused (400). {ADMIN_BODY_NOTE}",
                requestBody=body(ref("SubscriberCreate"), "The new subscriber."),
            ),
        },
        "/subscribers/import": {
            "post": operation(
                "importSubscribers",
                "Create subscribers in bulk",
                "subscribers",
                "admin",
                {
                    "201": response("Created (some entries may be skipped).", imported),
                    "200": response("Every entry was skipped: nothing created.", imported),
                },
                errors=(400, 413),
                description=(
                    "All or nothing: one invalid entry (400, the message names its index, "
                    "e.g. `subscribers[3]: …`) and none is created. An entry identical in "
                    "`topic`, `target_url` and `filter_expression` to an existing "
                    "subscriber (enabled or not) is skipped and the existing id returned, "
                    "so an import can be retried safely. At most "
                    f"{MAX_IMPORT_ENTRIES} entries; body limit {MAX_IMPORT_BODY} bytes "
                    "(413 above it)."
                ),
                requestBody=body(ref("SubscriberImport"), "The new subscribers."),
            )
        },
        "/subscribers/{id}": {
            "parameters": by_id,
            "get": operation(
                "getSubscriber",
                "Show a subscriber",
                "subscribers",
                "admin",
                {
                    "200": response(
                        "The subscriber and its endpoint.", ref("SubscriberWithEndpoint")
                    )
                },
                errors=(404,),
            ),
            "patch": operation(
                "updateSubscriber",
                "Change a subscriber",
                "subscribers",
                "admin",
                {"200": response("The updated subscriber.", ref("Subscriber"))},
                errors=(400, 404, 413),
                description=(
                    "Only the fields given change; unknown fields are refused (400). A new "
                    f"`secret` is shown in this answer only. {ADMIN_BODY_NOTE}"
                ),
                requestBody=body(ref("SubscriberUpdate"), "The fields to change."),
            ),
            "delete": operation(
                "deleteSubscriber",
                "Delete a subscriber",
                "subscribers",
                "admin",
                {"204": response("Deleted.")},
                errors=(404,),
            ),
        },
    }


def id_number() -> Schema:
    """A numeric id or cursor as the API takes it."""
    return {"type": "integer", "minimum": 0, "maximum": 10**MAX_ID_DIGITS - 1}


def page_params() -> list[Schema]:
    """`limit` and `cursor` of the newest-first listings."""
    return [
        query(
            "limit",
            id_number(),
            f"Page size; absent or 0 means {DEFAULT_PAGE}, above {MAX_PAGE} means {MAX_PAGE}.",
        ),
        query("cursor", id_number(), "The `next_cursor` of the previous page."),
    ]


def dead_letter_paths() -> dict[str, Schema]:
    """`/dead`, `/dead/replay`, `/dead/{id}` and `/dead/{id}/replay`."""
    filters = dead_filter_fields()
    by_id = [
        param("id", "path", id_number(), "Dead letter id (anything else: 404).", required=True)
    ]
    count = {"type": "integer", "minimum": 0, "description": "How many were enqueued again."}
    return {
        "/dead": {
            "get": operation(
                "listDeadLetters",
                "List dead letters",
                "dead letters",
                "admin",
                {"200": response("A page, newest first.", ref("DeadLetterPage"))},
                errors=(400,),
                parameters=[
                    *(
                        query(name, schema, schema["description"])
                        for name, schema in filters.items()
                    ),
                    *page_params(),
                ],
            )
        },
        "/dead/replay": {
            "post": operation(
                "replayDeadLetters",
                "Replay dead letters in bulk",
                "dead letters",
                "admin",
                {"202": response("Enqueued again.", obj({"replayed": count}))},
                errors=(400, 413, 503),
                description=(
                    "Enqueues a fresh delivery (same event id) of every matching dead letter "
                    "and marks each replayed; those whose subscriber is gone or disabled "
                    f"are skipped. {ADMIN_BODY_NOTE}"
                ),
                requestBody=body(ref("BulkReplayRequest"), "Which dead letters."),
            )
        },
        "/dead/{id}": {
            "parameters": by_id,
            "get": operation(
                "getDeadLetter",
                "Show a dead letter with its payload",
                "dead letters",
                "admin",
                {"200": response("The dead letter.", ref("DeadLetterWithPayload"))},
                errors=(404,),
            ),
            "delete": operation(
                "deleteDeadLetter",
                "Delete a dead letter",
                "dead letters",
                "admin",
                {"204": response("Deleted.")},
                errors=(404,),
            ),
        },
        "/dead/{id}/replay": {
            "parameters": by_id,
            "post": operation(
                "replayDeadLetter",
                "Replay one dead letter",
                "dead letters",
                "admin",
                {
                    "202": response(
                        "Enqueued again.",
                        obj({"replayed": count, "event_id": string()}),
                    )
                },
                errors=(404, 409, 503),
                description=(
                    "Enqueues a fresh delivery (same event id) and records the replay. 409 "
                    "when its subscriber was deleted or is disabled."
                ),
            ),
        },
    }


def delivery_log_paths() -> dict[str, Schema]:
    """`/events`, `/events/{id}`, `/subscribers/{id}/stats` and `/subscribers/{id}/test`."""
    by_subscriber = [param("id", "path", string(), "Subscriber id.", required=True)]
    seconds = {"type": "number", "description": "Unix time, seconds."}
    return {
        "/events": {
            "get": operation(
                "listEvents",
                "List logged events",
                "delivery log",
                "admin",
                {"200": response("A page, newest first.", ref("EventPage"))},
                errors=(400,),
                description=(
                    "Every accepted event within `SWITCH_LOG_RETENTION`, also those that "
                    "matched nobody, newest (last logged) first."
                ),
                parameters=[
                    query("topic", string(), "Only this topic's events."),
                    query("author", string(), "Only this author's events."),
                    query("status", string(enum=list(STATUSES)), STATUS_NOTE),
                    query("since", seconds, "Only events received at or after this time."),
                    query("until", seconds, "Only events received before this time."),
                    *page_params(),
                ],
            )
        },
        "/events/{id}": {
            "parameters": [param("id", "path", string(), "Event id.", required=True)],
            "get": operation(
                "getEvent",
                "Show an event's fate",
                "delivery log",
                "admin",
                {"200": response("The event, its attempts and states.", ref("EventDetail"))},
                errors=(404,),
            ),
        },
        "/subscribers/{id}/stats": {
            "parameters": by_subscriber,
            "get": operation(
                "getSubscriberStats",
                "A subscriber's delivery statistics",
                "delivery log",
                "admin",
                {"200": response("Over the last hour and day.", ref("SubscriberStats"))},
                errors=(404,),
                description=(
                    "Attempts (HTTP requests, test deliveries included), success rate, "
                    "p50/p99 latency of all attempts, and the last failed attempt."
                ),
            ),
        },
        "/subscribers/{id}/test": {
            "parameters": by_subscriber,
            "post": operation(
                "testSubscriber",
                "Test a subscriber's filter, and its endpoint",
                "delivery log",
                "admin",
                {"200": response("The filter's verdict.", ref("SubscriberTestResult"))},
                errors=(400, 404, 413),
                description=(
                    "Evaluates the filter on a sample payload. With `deliver: true` and a "
                    "match, sends it once as a real, signed delivery (no retry, no dead "
                    "letter; a disabled subscriber too), logged as a test event. "
                    f"{ADMIN_BODY_NOTE}"
                ),
                requestBody={
                    **body(ref("SubscriberTest"), "The sample; an empty body means `{}`."),
                    "required": False,
                },
            ),
        },
    }


def console_paths() -> dict[str, Schema]:
    """`/overview` and `/filters/check`: what the web console at `/console/` needs."""
    return {
        "/overview": {
            "get": operation(
                "getOverview",
                "Per-minute activity and queue state",
                "console",
                "admin",
                {"200": response("The series and the queue.", ref("Overview"))},
                errors=(400,),
                description=(
                    "Events published, attempts delivered and failed, dead letters created, "
                    "per minute over the last `minutes`, from the delivery log (so within "
                    "`SWITCH_LOG_RETENTION`); the queue's depth, oldest job and state."
                ),
                parameters=[
                    query(
                        "minutes",
                        {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES},
                        f"The window, in minutes (default {DEFAULT_MINUTES}).",
                    )
                ],
            )
        },
        "/filters/check": {
            "post": operation(
                "checkFilter",
                "Evaluate a filter expression on a sample payload",
                "console",
                "admin",
                {"200": response("The verdict.", ref("FilterCheckResult"))},
                errors=(400, 413),
                description=(
                    "Compiles the expression and evaluates it exactly as a subscriber's "
                    "filter is at publish time (and as `switchd check-filter` does). A "
                    "sample that `/publish` would refuse is refused (400). "
                    f"{ADMIN_BODY_NOTE}"
                ),
                requestBody=body(ref("FilterCheck"), "The expression and the sample."),
            )
        },
    }


def endpoint_paths() -> dict[str, Schema]:
    """`/endpoints`: endpoint isolation's state."""
    return {
        "/endpoints": {
            "get": operation(
                "listEndpoints",
                "Endpoints: limits, pauses and circuit breakers",
                "endpoints",
                "admin",
                {
                    "200": response(
                        "Every endpoint switchd knows, the worst first.", ref("EndpointList")
                    )
                },
                description=(
                    "Each target origin switchd delivered to lately: its in-flight limit "
                    "(halved by transient failures, raised by successes), deliveries in "
                    "flight, jobs set aside, circuit state and since when, last error. "
                    "Endpoints idle and healthy for 10 minutes are forgotten."
                ),
            )
        }
    }


def operations_paths() -> dict[str, Schema]:
    """Health, readiness, metrics and this document."""
    readiness = ref("Readiness")
    return {
        "/healthz": {
            "get": operation(
                "healthz",
                "Liveness",
                "operations",
                None,
                {"200": response("The event loop answers.", ref("Health"))},
            )
        },
        "/readyz": {
            "get": operation(
                "readyz",
                "Readiness",
                "operations",
                None,
                {
                    "200": response("The database and the queue answer.", readiness),
                    "503": response("Not ready (or draining); `reasons` says why.", readiness),
                },
            )
        },
        "/metrics": {
            "get": operation(
                "metrics",
                "Prometheus metrics",
                "operations",
                None,
                {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": string()}},
                    }
                },
            )
        },
        "/auth": {
            "get": operation(
                "authStatus",
                "Which tokens this server accepts",
                "operations",
                None,
                {"200": response("Whether admin tokens are configured.", ref("AuthStatus"))},
                description=(
                    "`admin_configured` is false while `SWITCH_ADMIN_JWT_SECRET` is unset "
                    "(then every management operation answers 403); `message` says what "
                    "to do. The console's sign-in screen reads it."
                ),
            )
        },
        "/openapi.json": {
            "get": operation(
                "openapi",
                "This document",
                "operations",
                None,
                {"200": response("The OpenAPI document.", {"type": "object"})},
            )
        },
    }


@cache
def document(version: str) -> dict[str, Any]:
    """The OpenAPI document for switchd `version` (built once; do not mutate it)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "switchd", "version": version, "description": INTRO},
        "tags": [
            {"name": "publishing", "description": "Seed-compatible publishing."},
            {"name": "subscribers", "description": "Who receives which topic (admin)."},
            {"name": "dead letters", "description": "Deliveries that failed for good (admin)."},
            {"name": "delivery log", "description": "Every event and attempt (admin)."},
            {"name": "console", "description": "What the web console needs (admin)."},
            {"name": "endpoints", "description": "Endpoint isolation's state (admin)."},
            {"name": "operations", "description": "Health, readiness, metrics (no auth)."},
        ],
        "paths": {
            **publish_paths(),
            **subscriber_paths(),
            **dead_letter_paths(),
            **delivery_log_paths(),
            **console_paths(),
            **endpoint_paths(),
            **operations_paths(),
        },
        "components": {
            "securitySchemes": {
                "publisherToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 JWT signed with `SWITCH_JWT_SECRET` (or "
                    "`SWITCH_JWT_SECRET_PREVIOUS`) with an `author` (or `Author`) claim and "
                    "an optional `topics` claim. Never an admin token, whatever its claims.",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "HS256 JWT signed with `SWITCH_ADMIN_JWT_SECRET` (or "
                    "`SWITCH_ADMIN_JWT_SECRET_PREVIOUS`) with an `author` (or `Author`) "
                    "claim and a `scope` holding `admin`.",
                },
            },
            "schemas": schemas(),
            "responses": error_responses(),
        },
    }
