//! The OpenAPI document of `/api/v1`, generated from the handlers' annotations (utoipa).
//!
//! Types that exist in Rust (alerts, users, deliveries…) give their schemas by derive. Objects
//! the server handles as JSON documents (rules, channels, subscriptions, silences, SMTP
//! settings, dry runs) have their schemas written here, in [`hand_written`]. Then
//! [`complete`] adds the answers every operation can give, so that no status code the server
//! answers is missing from the document:
//!
//! - `401` on every operation (all of them need a token), `500` and `503` on every operation;
//! - `400` on every operation that takes parameters or a body, or refuses parameters it does not
//!   take (all but [`IGNORE_QUERY`]);
//! - `404` on every operation with a path parameter (no such object, or another user's);
//! - `413` on every operation with a body.
//!
//! Every error answer has the one error shape, `#/components/schemas/Error`. The rest (`403`,
//! `409`, `415`, `422`, `429`, `502`) is written on the operations that answer it.
//! `tests/it/openapi.rs` runs schemathesis over every operation against a real server.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::notify::channel::KINDS;

#[derive(OpenApi)]
#[openapi(
    info(title = "Tellify", description = "Self-hosted event alerting server: events in, rules, alerts, notifications."),
    paths(
        super::events::post_events,
        super::system::list_topics,
        super::system::get_topic,
        super::system::list_sources,
        super::system::audit,
        super::rules::list_rules,
        super::rules::get_rule,
        super::rules::put_rule,
        super::rules::delete_rule,
        super::rules::test_rule,
        super::rules::test_unsaved,
        super::rules::list_templates,
        super::alerts::list_alerts,
        super::alerts::get_alert,
        super::alerts::ack_alert,
        super::alerts::resolve_alert,
        super::alerts::history,
        super::alerts::stream,
        super::alerts::stats,
        super::users::list_users,
        super::users::create_user,
        super::users::get_user,
        super::users::me,
        super::users::create_token,
        super::users::list_tokens,
        super::users::delete_token,
        super::channels::list_channels,
        super::channels::get_channel,
        super::channels::put_channel,
        super::channels::delete_channel,
        super::channels::test_channel,
        super::subscriptions::list,
        super::subscriptions::create,
        super::subscriptions::get,
        super::subscriptions::update,
        super::subscriptions::delete,
        super::silences::list,
        super::silences::create,
        super::silences::get,
        super::silences::expire,
        super::deliveries::list,
        super::deliveries::get,
        super::deliveries::retry,
        super::config::get_smtp,
        super::config::put_smtp,
    ),
    components(schemas(
        crate::wire::Alert,
        crate::store::User,
        crate::store::Delivery,
        crate::store::HistoryEntry,
        crate::store::TokenInfo,
        crate::store::AuditEntry,
        super::users::NewUser,
        super::users::NewToken,
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token: `Authorization: Bearer TOKEN` (POST /api/v1/tokens)",
                    ))
                    .build(),
            ),
        );
    }
}

/// `GET /api/v1/openapi.json`: public, like any API description.
pub async fn document() -> impl IntoResponse {
    static DOC: OnceLock<String> = OnceLock::new();
    let text = DOC.get_or_init(|| {
        serde_json::to_string(&full_document()).expect("the OpenAPI document serializes")
    });
    ([(header::CONTENT_TYPE, "application/json")], text.as_str())
}

/// The whole document: the annotations, the hand-written schemas, the common answers.
pub fn full_document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (name, schema) in hand_written() {
            schemas.insert(name.to_owned(), schema);
        }
    }
    complete(&mut doc);
    doc
}

const ERROR_REF: &str = "#/components/schemas/Error";

/// Operations that read no query string (so cannot answer `400`); every other one refuses
/// parameters it does not take.
const IGNORE_QUERY: [&str; 2] = ["me", "stream"];

/// Adds to every operation the answers it can give without saying so in its annotation, and
/// gives every error answer the error shape.
fn complete(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for op in item.values_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let params: Vec<String> = op
                .get("parameters")
                .and_then(Value::as_array)
                .map(|ps| {
                    ps.iter()
                        .filter_map(|p| p.get("in").and_then(Value::as_str).map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let has_body = op.contains_key("requestBody");
            let id = op
                .get("operationId")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            // A body is required unless its schema admits `null` (then none is fine, too).
            if let Some(body) = op.get_mut("requestBody").and_then(Value::as_object_mut) {
                let optional = body
                    .get("content")
                    .is_some_and(|c| c.to_string().contains(r#"{"type":"null"}"#));
                body.insert("required".into(), json!(!optional));
            }
            let responses = op
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("responses is an object");
            let mut add = |status: &str, description: &str| {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| json!({ "description": description }));
            };
            add(
                "401",
                "no token, or one that is not valid: `Authorization: Bearer TOKEN`",
            );
            if has_body || !params.is_empty() || !IGNORE_QUERY.contains(&id.as_str()) {
                add(
                    "400",
                    "a bad request: a parameter (or one it does not take), the path or the body is not valid",
                );
            }
            if params.iter().any(|p| p == "path") {
                add("404", "no such object (another user's answers the same)");
            }
            if has_body {
                add("413", "the body is over the server's size limit");
            }
            add("500", "the server could not complete the request (logged)");
            add(
                "503",
                "the server cannot serve this now (storage failing, or shutting down)",
            );
            for (status, response) in responses.iter_mut() {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                if let Some(r) = response.as_object_mut() {
                    r.insert(
                        "content".into(),
                        json!({ "application/json": { "schema": { "$ref": ERROR_REF } } }),
                    );
                }
            }
        }
    }
}

fn string_map() -> Value {
    json!({ "type": "object", "additionalProperties": { "type": "string" } })
}

fn string_list() -> Value {
    json!({ "type": "array", "items": { "type": "string" } })
}

fn list_of(field: &str, item: &str) -> Value {
    json!({
        "type": "object",
        "required": [field],
        "properties": { field: { "type": "array", "items": { "$ref": format!("#/components/schemas/{item}") } } },
    })
}

/// Schemas of the objects handled as JSON documents, and of the list answers.
fn hand_written() -> Vec<(&'static str, Value)> {
    let severity = json!({ "type": "string", "enum": ["critical", "error", "warning", "info"] });
    let duration =
        json!({ "type": "string", "description": "a duration, e.g. `90s`, `5m`, `1h 30m`" });
    let read_only_rule = json!({
        "owner": { "type": "string", "readOnly": true },
        "origin": { "type": "string", "readOnly": true, "description": "`api`, or `file:PATH` for rules from `--rules`" },
        "status": { "type": "string", "readOnly": true, "enum": ["ok", "error", "disabled", "template"] },
        "error": { "type": ["string", "null"], "readOnly": true },
        "updated_at": { "type": "integer", "readOnly": true },
    });
    let mut rule_props = json!({
        "name": { "type": "string", "description": "must equal the name in the path, if given" },
        "description": { "type": "string" },
        "kind": { "type": "string", "enum": ["match", "threshold", "count", "absence", "script"] },
        "source": { "type": "string", "description": "a source name or glob" },
        "when": { "type": "string", "description": "JavaScript condition over `event`" },
        "key": { "type": "string" },
        "group_by": string_list(),
        "severity": severity,
        "value": { "type": "string" },
        "labels": string_map(),
        "summary": { "type": "string", "description": "Jinja template, re-rendered as the alert folds new events" },
        "resolve_summary": { "type": "string", "description": "Jinja template: what the alert says when the rule resolves it" },
        "body": { "type": "string", "description": "Jinja template" },
        "links": string_map(),
        "resolve_when": { "type": "string" },
        "resolve_after": duration,
        "repeat_every": duration,
        "notify": string_list(),
        "disabled": { "type": "boolean" },
        "for": duration,
        "every": duration,
        "window": duration,
        "threshold": { "type": "integer", "minimum": 0 },
        "distinct": { "type": "string" },
        "expect_every": duration,
        "keys": string_list(),
        "script": { "type": "string", "description": "JavaScript defining `function handle(event, ctx)`" },
        "template": { "type": "boolean", "enum": [false] },
    });
    let mut instance_props = json!({
        "name": { "type": "string" },
        "from": { "type": "string", "description": "the template's name" },
        "params": { "description": "the template's params, checked against its schema" },
        "description": { "type": "string" },
        "disabled": { "type": "boolean" },
    });
    for props in [&mut rule_props, &mut instance_props] {
        if let (Some(p), Some(ro)) = (props.as_object_mut(), read_only_rule.as_object()) {
            p.extend(ro.clone());
        }
    }
    let rule_document = json!({
        "description": "A rule, a template (`template: true`: kept as written, its fields may hold `{{ params.X }}`) or an instance of a template (`from`, `params`). Read-only fields of a rule as shown are accepted and ignored, so a rule can be read, edited and sent back. JavaScript, templates and durations are checked on save: `400` with `field`, `line` and `column`.",
        "anyOf": [
            { "title": "rule", "type": "object", "properties": rule_props, "additionalProperties": false },
            { "title": "template", "type": "object", "required": ["template"],
              "properties": {
                  "template": { "type": "boolean", "enum": [true] },
                  "name": { "type": "string" },
                  "description": { "type": "string" },
                  "params": { "type": "object", "description": "a JSON Schema of the params" },
              } },
            { "title": "instance", "type": "object", "required": ["from"], "properties": instance_props,
              "additionalProperties": false },
        ],
    });
    let rule = json!({
        "description": "A rule's document as saved, with read-only fields.",
        "type": "object",
        "required": ["name", "owner", "origin", "status", "error", "updated_at"],
        "properties": read_only_rule,
        "additionalProperties": true,
    });

    let kinds: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
    let channel_settings = json!({
        "description": "A channel: `kind`, `shared` (admins) and the kind's settings, flat. Secrets left out or sent as `***` keep their stored value. Each kind's settings are checked when saved — a setting the kind does not have, a missing or mistyped one, a bad URL: `400 invalid_channel`, naming the setting. Read-only fields of a read (`owner`, `created_at`, `updated_at`, `circuit`) are accepted and ignored.",
        "type": "object",
        "properties": {
            "kind": { "type": "string", "enum": kinds, "description": "required for a new channel" },
            "shared": { "type": "boolean" },
            "name": { "type": "string", "description": "must equal the name in the path, if given" },
            "owner": { "readOnly": true },
            "created_at": { "readOnly": true },
            "updated_at": { "readOnly": true },
            "circuit": { "readOnly": true },
        },
        "additionalProperties": true,
    });
    let circuit = json!({
        "description": "The channel's circuit breaker: `closed` (sends go), `open` until `until` after `failures` consecutive failures of the receiver (deliveries wait without spending attempts), then `half-open` (the next send tries; a failure opens it again, a success closes it).",
        "type": "object",
        "required": ["state", "failures"],
        "properties": {
            "state": { "type": "string", "enum": ["closed", "half-open", "open"] },
            "until": { "type": "integer", "description": "while open: when the next send may try (ms since the epoch)" },
            "failures": { "type": "integer", "minimum": 0 },
        },
        "additionalProperties": false,
    });
    let channel = json!({
        "description": "A channel, secrets shown as `***`, with its circuit breaker.",
        "type": "object",
        "required": ["name", "kind", "owner", "shared", "created_at", "updated_at", "circuit"],
        "properties": {
            "name": { "type": "string" },
            "kind": { "type": "string", "enum": kinds },
            "owner": { "type": "string" },
            "shared": { "type": "boolean" },
            "created_at": { "type": "integer" },
            "updated_at": { "type": "integer" },
            "circuit": circuit,
        },
        "additionalProperties": true,
    });

    let clock = json!({ "type": "string", "description": "a local time, `HH:MM`" });
    let window = json!({
        "type": "object",
        "properties": {
            "days": { "type": "array", "items": { "type": "string", "enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"] } },
            "from": clock,
            "to": clock,
        },
        "additionalProperties": false,
    });
    let subscription_props = json!({
        "channel": { "type": "string", "description": "one of the owner's channels, or a shared one" },
        "rules": { "type": "array", "items": { "type": "string" }, "description": "rule names or globs; none: every rule" },
        "min_severity": severity,
        "labels": string_map(),
        "when": { "type": "string", "description": "JavaScript over `alert`" },
        "schedule": { "anyOf": [window, { "type": "array", "items": window }] },
        "digest": { "type": "object", "properties": { "every": duration, "at": { "type": "array", "items": clock } }, "additionalProperties": false },
        "notify_on": { "type": "array", "items": { "type": "string", "enum": ["fire", "resolve", "ack", "repeat", "disable"] } },
        "format": { "type": "string", "enum": ["html", "text", "short"] },
        "template": { "type": "string", "description": "Jinja template of the message" },
    });
    let mut subscription_in_props = subscription_props.clone();
    let mut subscription_out_props = subscription_props;
    for (name, ty) in [
        ("id", "string"),
        ("owner", "string"),
        ("created_at", "integer"),
        ("updated_at", "integer"),
    ] {
        subscription_in_props[name] = json!({ "readOnly": true });
        subscription_out_props[name] = json!({ "type": ty });
    }
    let new_subscription = json!({
        "description": "Which of the owner's alerts go to which channel, and when. Read-only fields are accepted and ignored. The channel must exist and JavaScript and templates must compile: `400 invalid_subscription`.",
        "type": "object",
        "required": ["channel"],
        "properties": subscription_in_props,
        "additionalProperties": false,
    });
    let subscription = json!({
        "type": "object",
        "required": ["id", "owner", "channel", "created_at", "updated_at"],
        "properties": subscription_out_props,
    });

    let matchers = json!({
        "type": "object",
        "description": "each given matcher must match (globs allowed)",
        "properties": { "rule": { "type": "string" }, "key": { "type": "string" }, "labels": string_map() },
        "additionalProperties": false,
    });
    let new_silence = json!({
        "type": "object",
        "required": ["matchers", "ends_at"],
        "properties": {
            "matchers": matchers,
            "starts_at": { "type": "string", "format": "date-time", "description": "default: now" },
            "ends_at": { "type": "string", "format": "date-time", "description": "after `starts_at`" },
            "comment": { "type": "string" },
        },
        "additionalProperties": false,
    });
    let silence = json!({
        "type": "object",
        "required": ["id", "owner", "matchers", "starts_at", "ends_at", "comment", "created_at", "state", "created_by"],
        "properties": {
            "id": { "type": "string" },
            "owner": { "type": "string" },
            "matchers": matchers,
            "starts_at": { "type": "integer" },
            "ends_at": { "type": "integer" },
            "comment": { "type": "string" },
            "created_at": { "type": "integer" },
            "state": { "type": "string", "enum": ["pending", "active", "expired"] },
            "created_by": { "type": "string" },
        },
    });

    let smtp_props = json!({
        "host": { "type": "string" },
        "port": { "type": "integer", "minimum": 0, "maximum": 65535 },
        "from_addr": { "type": "string", "description": "an email address" },
        "from_name": { "type": "string" },
        "encryption": { "type": "string", "enum": ["tls", "starttls", "none"] },
        "auth": { "type": "string", "enum": ["password", "none"] },
        "username": { "type": "string" },
        "password": { "type": "string", "description": "write-only: shown as `***`; `***` or left out keeps the stored one" },
        "ca_file": { "type": "string" },
    });
    let mut smtp_in_props = smtp_props.clone();
    smtp_in_props["test_addr"] = json!({
        "type": ["string", "null"],
        "description": "send a test email there first; if that fails: `422`, nothing saved",
    });
    let smtp_settings = json!({
        "description": "The server's SMTP settings. `host` must not be blank, `from_addr` must be an email address, `auth: password` needs `username` and `password`: else `400 invalid_smtp`.",
        "type": "object",
        "required": ["host", "from_addr"],
        "properties": smtp_in_props,
        "additionalProperties": false,
    });
    let smtp = json!({
        "description": "The SMTP settings, password shown as `***`; `{}` when none are set.",
        "type": "object",
        "properties": smtp_props,
        "additionalProperties": false,
    });

    let dry_run = json!({
        "description": "What the events would do: alert changes, the notifications they would cause, events the rule's script would emit, and JavaScript errors. Nothing is stored or sent.",
        "type": "object",
        "required": ["changes", "notifications", "emitted", "errors"],
        "properties": {
            "changes": { "type": "array", "items": { "type": "object" } },
            "notifications": { "type": "array", "items": { "type": "object" } },
            "emitted": { "type": "array", "items": { "type": "object" } },
            "errors": { "type": "array", "items": { "type": "object" } },
        },
    });
    let dry_run_request = json!({
        "type": "object",
        "required": ["rule"],
        "properties": {
            "rule": { "$ref": "#/components/schemas/RuleDocument" },
            "events": { "type": "array", "items": { "$ref": "#/components/schemas/Event" } },
            "source": { "type": "string" },
            "advance": duration,
        },
        "additionalProperties": false,
    });
    let moment =
        json!({ "anyOf": [{ "type": "number" }, { "type": "string", "format": "date-time" }] });
    let event = json!({
        "description": "An event: any JSON object. Its `time` or else its `timestamp`, when present and not null, is its event time (RFC 3339 or epoch milliseconds); else its arrival time.",
        "type": "object",
        "anyOf": [
            { "required": ["time"], "properties": { "time": moment } },
            { "properties": {
                "time": { "type": "null" },
                "timestamp": { "anyOf": [moment, { "type": "null" }] },
            } },
        ],
    });

    vec![
        (
            "Error",
            json!({
                "description": "Every error answer: a stable `code`, a `message` for people, and sometimes more fields (`field`, `line`, `column`, `index`, `failures`).",
                "type": "object",
                "required": ["error"],
                "properties": { "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": { "code": { "type": "string" }, "message": { "type": "string" } },
                } },
            }),
        ),
        ("Event", event),
        (
            "Events",
            json!({
                "anyOf": [
                    { "$ref": "#/components/schemas/Event" },
                    { "type": "array", "minItems": 1, "items": { "$ref": "#/components/schemas/Event" } },
                ],
            }),
        ),
        (
            "Accepted",
            json!({
                "type": "object", "required": ["accepted"],
                "properties": { "accepted": { "type": "integer", "minimum": 1, "description": "events stored" } },
            }),
        ),
        (
            "TopicData",
            json!({
                "type": "object", "required": ["event", "time"],
                "properties": { "event": { "description": "the source's latest event" }, "time": { "type": ["integer", "null"] } },
            }),
        ),
        (
            "Topics",
            json!({
                "description": "source name → its latest event and that event's time",
                "type": "object", "additionalProperties": { "$ref": "#/components/schemas/TopicData" },
            }),
        ),
        (
            "Topic",
            json!({
                "type": "object", "required": ["source", "event", "time"],
                "properties": { "source": { "type": "string" }, "event": {}, "time": { "type": ["integer", "null"] } },
            }),
        ),
        (
            "Source",
            json!({
                "type": "object", "required": ["name", "kind", "owner", "visibility", "events", "last_time", "state"],
                "properties": {
                    "name": { "type": "string" }, "kind": { "type": "string" }, "owner": { "type": "string" },
                    "visibility": { "type": "string" }, "events": { "type": "integer" },
                    "last_time": { "type": ["integer", "null"] }, "state": { "type": "string" },
                },
            }),
        ),
        ("SourceList", list_of("sources", "Source")),
        ("AuditList", list_of("audit", "AuditEntry")),
        ("RuleDocument", rule_document),
        ("Rule", rule),
        ("RuleList", list_of("rules", "Rule")),
        ("DryRun", dry_run),
        ("DryRunRequest", dry_run_request),
        (
            "Template",
            json!({
                "type": "object", "required": ["name", "owner", "params"],
                "properties": {
                    "name": { "type": "string" }, "owner": { "type": "string" },
                    "description": { "type": ["string", "null"] },
                    "params": { "description": "the JSON Schema of the template's params" },
                },
            }),
        ),
        ("TemplateList", list_of("templates", "Template")),
        (
            "AlertList",
            json!({
                "type": "object", "required": ["alerts", "next_cursor"],
                "properties": {
                    "alerts": { "type": "array", "items": { "$ref": "#/components/schemas/Alert" } },
                    "next_cursor": { "type": ["string", "null"], "description": "pass as `cursor` for the next page; null on the last" },
                },
            }),
        ),
        (
            "AlertDetail",
            json!({
                "allOf": [
                    { "$ref": "#/components/schemas/Alert" },
                    { "type": "object", "required": ["history", "deliveries"], "properties": {
                        "history": { "type": "array", "items": { "$ref": "#/components/schemas/HistoryEntry" } },
                        "deliveries": { "type": "array", "items": { "$ref": "#/components/schemas/Delivery" } },
                    } },
                ],
            }),
        ),
        ("HistoryList", list_of("history", "HistoryEntry")),
        (
            "AlertStats",
            json!({
                "type": "object", "required": ["groups"],
                "properties": { "groups": { "type": "array", "items": {
                    "type": "object", "required": ["alerts"],
                    "properties": { "alerts": { "type": "integer" } },
                    "additionalProperties": { "type": ["string", "null"] },
                } } },
            }),
        ),
        ("UserList", list_of("users", "User")),
        (
            "NewTokenAnswer",
            json!({
                "description": "the token itself is shown this once",
                "type": "object", "required": ["id", "token", "user"],
                "properties": { "id": { "type": "string" }, "token": { "type": "string" }, "user": { "type": "string" } },
            }),
        ),
        ("TokenList", list_of("tokens", "TokenInfo")),
        ("ChannelSettings", channel_settings),
        ("Channel", channel),
        ("ChannelList", list_of("channels", "Channel")),
        (
            "ChannelTest",
            json!({
                "type": "object", "required": ["sent"], "properties": { "sent": { "type": "boolean" } },
            }),
        ),
        ("NewSubscription", new_subscription),
        ("Subscription", subscription),
        ("SubscriptionList", list_of("subscriptions", "Subscription")),
        ("NewSilence", new_silence),
        ("Silence", silence),
        ("SilenceList", list_of("silences", "Silence")),
        (
            "DeliveryList",
            json!({
                "type": "object", "required": ["deliveries", "next_cursor"],
                "properties": {
                    "deliveries": { "type": "array", "items": { "$ref": "#/components/schemas/Delivery" } },
                    "next_cursor": { "type": ["string", "null"], "description": "pass as `cursor` for the next page; null on the last" },
                },
            }),
        ),
        ("SmtpSettings", smtp_settings),
        ("Smtp", smtp),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document points at a schema it holds.
    #[test]
    fn every_reference_resolves() {
        let doc = full_document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(schemas.contains_key(name), "dangling reference to {name}");
        }
    }
}
