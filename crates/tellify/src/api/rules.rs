//! `/api/v1/rules…` and `/api/v1/templates`: rules as documents, saved through the engine.
//!
//! A rule is shown as its document plus read-only fields (`owner`, `origin`, `status`,
//! `error`, `updated_at`); a PUT ignores those, so what a GET shows can be edited and sent back.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tellify_core::alert::{Alert, Change};
use tellify_core::eval::dry_run;
use tellify_core::event::{self, Event};
use tellify_core::rule::{self, RuleDoc, RuleSpec};

use super::extract::{Bytes, Json, NoParams, Path, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::engine::resolve_doc;
use crate::store::StoredRule;

/// Fields a rule view adds to the document; a PUT drops them.
const READ_ONLY: [&str; 5] = ["owner", "origin", "status", "error", "updated_at"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    /// Admins: act on this user's rule.
    pub owner: Option<String>,
}

/// A rule as shown. `status`: `template`, `disabled`, `error` (see `error`), `throttled` (its
/// owner's rules used up their share of engine time: their events wait), or `ok`.
fn view(rule: &StoredRule, throttled: bool) -> Value {
    let mut out = match &rule.doc {
        Value::Object(map) => map.clone(),
        _ => Map::new(),
    };
    let status = if out.get("template") == Some(&Value::Bool(true)) {
        "template"
    } else if out.get("disabled") == Some(&Value::Bool(true)) {
        "disabled"
    } else if rule.error.is_some() {
        "error"
    } else if throttled {
        "throttled"
    } else {
        "ok"
    };
    out.insert("owner".into(), json!(rule.owner));
    out.insert("origin".into(), json!(rule.origin));
    out.insert("status".into(), json!(status));
    out.insert("error".into(), json!(rule.error));
    out.insert("updated_at".into(), json!(rule.updated_at));
    Value::Object(out)
}

#[utoipa::path(get, path = "/api/v1/rules", tag = "rules",
    params(("owner" = Option<String>, Query, description = "admins: this user's rules (default: all)")),
    responses((status = 200, description = "the caller's rules (admins: all, or `?owner=`)", body = ref("#/components/schemas/RuleList")),
              (status = 403, description = "`owner` names another user and the caller is not an admin")))]
pub async fn list_rules(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<OwnerQuery>,
) -> ApiResult<Json<Value>> {
    let owner = match query.owner {
        Some(o) => Some(caller.acting_for(Some(&o))?),
        None => caller.scope(),
    };
    let rules = state.store.list_rules(owner.as_deref()).await?;
    Ok(Json(
        json!({ "rules": rules.iter().map(|r| view(r, state.engine.is_throttled(&r.owner))).collect::<Vec<_>>() }),
    ))
}

async fn find(
    state: &AppState,
    caller: &Caller,
    owner: Option<&str>,
    name: &str,
) -> ApiResult<StoredRule> {
    let owner = match owner {
        Some(o) if !caller.user.is_admin() && o != caller.user.name => {
            return Err(ApiError::not_found("rule"));
        }
        Some(o) => o.to_owned(),
        None => caller.user.name.clone(),
    };
    state
        .store
        .get_rule(&owner, name)
        .await?
        .ok_or_else(|| ApiError::not_found("rule"))
}

#[utoipa::path(get, path = "/api/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path, description = "rule name, URL-encoded", pattern = r"^[^\x00-\x1F\x7F-\x9F]+$"), ("owner" = Option<String>, Query, description = "admins: the user whose object this is (default: the caller)")),
    responses((status = 200, description = "the rule", body = ref("#/components/schemas/Rule"))))]
pub async fn get_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<OwnerQuery>,
) -> ApiResult<Json<Value>> {
    let rule = find(&state, &caller, query.owner.as_deref(), &name).await?;
    Ok(Json(view(&rule, state.engine.is_throttled(&rule.owner))))
}

#[utoipa::path(put, path = "/api/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path, description = "rule name, URL-encoded"), ("owner" = Option<String>, Query, description = "admins: the user whose object this is (default: the caller)")),
    request_body(content = ref("#/components/schemas/RuleDocument"), content_type = "application/json"),
    responses((status = 200, description = "replaced", body = ref("#/components/schemas/Rule")),
              (status = 201, description = "created", body = ref("#/components/schemas/Rule")),
              (status = 400, description = "invalid rule (`invalid_rule`, with `field`, `line`, `column`) or params (`invalid_params`, with `failures`)"),
              (status = 403, description = "`owner` names another user and the caller is not an admin")))]
pub async fn put_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<OwnerQuery>,
    Bytes(body): Bytes,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let owner = caller.acting_for(query.owner.as_deref())?;
    let mut doc: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_rule", format!("malformed JSON: {e}")))?;
    let Value::Object(map) = &mut doc else {
        return Err(ApiError::bad_request(
            "invalid_rule",
            "a rule must be a JSON object",
        ));
    };
    for field in READ_ONLY {
        map.remove(field);
    }
    match map.get("name") {
        None => {
            map.insert("name".into(), json!(name));
        }
        Some(Value::String(n)) if *n == name => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_rule",
                "the rule's `name` differs from the name in the path",
            )
            .with("field", "name"));
        }
    }
    let doc = rule::parse_doc(doc)?;
    let existed = state.store.get_rule(&owner, &name).await?.is_some();
    state.engine.put_rule(&owner, doc, "api").await?;
    state
        .store
        .audit(
            &caller.user.name,
            "rule.put",
            &format!("{owner}/{name}"),
            None,
            state.clock.now(),
        )
        .await?;
    let stored = state
        .store
        .get_rule(&owner, &name)
        .await?
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("a saved rule was not found")))?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let throttled = state.engine.is_throttled(&stored.owner);
    Ok((status, Json(view(&stored, throttled))))
}

#[utoipa::path(delete, path = "/api/v1/rules/{name}", tag = "rules",
    params(("name" = String, Path, description = "rule name, URL-encoded", pattern = r"^[^\x00-\x1F\x7F-\x9F]+$"), ("owner" = Option<String>, Query, description = "admins: the user whose object this is (default: the caller)")),
    responses((status = 204, description = "deleted; its open alerts are resolved")))]
pub async fn delete_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<OwnerQuery>,
) -> ApiResult<StatusCode> {
    let rule = find(&state, &caller, query.owner.as_deref(), &name).await?;
    if !state.engine.delete_rule(&rule.owner, &name).await {
        return Err(ApiError::not_found("rule"));
    }
    state
        .store
        .audit(
            &caller.user.name,
            "rule.delete",
            &format!("{}/{name}", rule.owner),
            None,
            state.clock.now(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestQuery {
    pub owner: Option<String>,
    /// The source the events come from (default `default`).
    pub source: Option<String>,
    /// How long to let pass after the last event (e.g. `5m`), to see `for` and windows play out.
    pub advance: Option<String>,
}

/// Dry run of a saved rule: body = events (JSON, NDJSON or text); nothing is stored.
#[utoipa::path(post, path = "/api/v1/rules/{name}/test", tag = "rules",
    params(("name" = String, Path, description = "rule name, URL-encoded", pattern = r"^[^\x00-\x1F\x7F-\x9F]+$"), ("owner" = Option<String>, Query, description = "admins: the user whose object this is (default: the caller)"),
           ("source" = Option<String>, Query, description = "source of the events (default `default`)"),
           ("advance" = Option<String>, Query, description = "time to let pass after the events, e.g. `5m`")),
    request_body(description = "events, as for `POST /api/v1/events`",
        content((ref("#/components/schemas/Events") = "application/json"), (String = "application/x-ndjson"), (String = "text/plain"))),
    responses((status = 200, description = "what the events would do; nothing is stored or sent", body = ref("#/components/schemas/DryRun")),
              (status = 400, description = "a bad event, a bad `advance`, or the rule is a template"),
              (status = 415, description = "unsupported content type")))]
pub async fn test_rule(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(query): Query<TestQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Value>> {
    let stored = find(&state, &caller, query.owner.as_deref(), &name).await?;
    let doc = rule::parse_doc(stored.doc.clone())?;
    let spec = instantiate_for(&state, &stored.owner, &doc).await?;
    let source = query.source.unwrap_or_else(|| "default".to_owned());
    let now = state.clock.now();
    let format = super::events::format_of(None, &headers)?;
    let bytes = axum::body::to_bytes(body, state.body_limit)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the body is over the limit",
            )
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|e| ApiError::bad_request("bad_event", format!("the body is not UTF-8: {e}")))?;
    let objects = event::parse_body(format, text)
        .map_err(|e| ApiError::bad_request("bad_event", e.message).with("index", e.index))?;
    let events = event::into_events(&source, objects, now)
        .map_err(|e| ApiError::bad_request("bad_event", e.message).with("index", e.index))?;
    run_dry(
        &state,
        &stored.owner,
        spec,
        events,
        query.advance.as_deref(),
    )
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestBody {
    pub rule: Value,
    #[serde(default)]
    pub events: Vec<Value>,
    pub source: Option<String>,
    pub advance: Option<String>,
}

/// Dry run of a rule that is not saved (the editor's "try it" panel).
#[utoipa::path(post, path = "/api/v1/rules/test", tag = "rules",
    request_body(content = ref("#/components/schemas/DryRunRequest"), content_type = "application/json"),
    responses((status = 200, description = "what the events would do; nothing is stored or sent", body = ref("#/components/schemas/DryRun")),
              (status = 400, description = "an invalid rule, a bad event or a bad `advance`"),
              (status = 415, description = "the body is not `application/json`")))]
pub async fn test_unsaved(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<TestBody>,
) -> ApiResult<Json<Value>> {
    let doc = rule::parse_doc(body.rule)?;
    let spec = instantiate_for(&state, &caller.user.name, &doc).await?;
    let source = body.source.unwrap_or_else(|| "default".to_owned());
    let objects = body
        .events
        .into_iter()
        .enumerate()
        .map(|(index, e)| match e {
            Value::Object(map) => Ok(map),
            _ => Err(
                ApiError::bad_request("bad_event", "an event must be a JSON object")
                    .with("index", index),
            ),
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let events = event::into_events(&source, objects, state.clock.now())
        .map_err(|e| ApiError::bad_request("bad_event", e.message).with("index", e.index))?;
    run_dry(
        &state,
        &caller.user.name,
        spec,
        events,
        body.advance.as_deref(),
    )
    .await
}

async fn instantiate_for(state: &AppState, owner: &str, doc: &RuleDoc) -> ApiResult<RuleSpec> {
    let rules = state.store.list_rules(None).await?;
    let users = state.store.list_users().await?;
    let is_admin = |name: &str| users.iter().any(|u| u.name == name && u.is_admin());
    let lookup = |o: &str, n: &str| {
        rules
            .iter()
            .filter(|r| r.name == n && (r.owner == o || is_admin(&r.owner)))
            .min_by_key(|r| r.owner != o)
            .and_then(|r| match rule::parse_doc(r.doc.clone()) {
                Ok(RuleDoc::Template(t)) => Some(t),
                _ => None,
            })
    };
    resolve_doc(doc, owner, &lookup)?.ok_or_else(|| {
        ApiError::bad_request(
            "invalid_rule",
            "a template is not run itself: test an instance of it",
        )
    })
}

async fn run_dry(
    state: &AppState,
    owner: &str,
    spec: RuleSpec,
    events: Vec<Event>,
    advance: Option<&str>,
) -> ApiResult<Json<Value>> {
    let advance_ms = match advance {
        Some(a) => a
            .parse::<rule::Duration>()
            .map_err(|m| ApiError::bad_request("bad_request", m))?
            .millis(),
        None => 0,
    };
    let limits = state.limits;
    let owner = owner.to_owned();
    let start = state.clock.now();
    let (store, outbox) = (state.store.clone(), state.outbox.clone());
    let runtime = tokio::runtime::Handle::current();
    // The dispatcher runs JavaScript (subscriptions' `when`), which is single-threaded: it is
    // made, filled and used on this one blocking thread.
    let (result, notifications) = tokio::task::spawn_blocking(move || {
        let notify = spec.notify.clone();
        let rule_name = spec.name.clone();
        let result = dry_run(limits, &owner, vec![spec], &events, start, advance_ms)?;
        let mut dispatcher = crate::dispatch::Dispatcher::new(limits);
        let notifications = match runtime.block_on(dispatcher.reload(store.as_ref(), outbox.as_ref())) {
            Ok(()) => {
                dispatcher.set_rule_notify(&owner, &rule_name, &notify);
                would_notify(&mut dispatcher, &result.changes, start)
            }
            Err(e) => {
                tracing::warn!(message = "Dry run: notification settings unreadable.", error = %format!("{e:#}"));
                Vec::new()
            }
        };
        Ok::<_, tellify_core::rule::RuleError>((result, notifications))
    })
    .await
    .map_err(|e| ApiError::internal(e.into()))??;
    Ok(Json(json!({
        "changes": result.changes,
        "notifications": notifications,
        "emitted": result.emitted,
        "errors": result.errors,
    })))
}

/// The notifications a dry run's alert changes would cause with the owner's subscriptions,
/// channels and silences as they are: nothing is stored or sent.
fn would_notify(
    dispatcher: &mut crate::dispatch::Dispatcher,
    changes: &[Change],
    now: i64,
) -> Vec<Value> {
    // The alerts as the changes make them, by the fold the engine commits.
    let mut alerts: std::collections::HashMap<String, Option<Alert>> =
        std::collections::HashMap::new();
    let mut out = Vec::new();
    for change in changes {
        let alert = alerts.entry(change.alert().id.clone()).or_default();
        let Some(trigger) = Alert::apply(alert, change).and_then(|effect| effect.trigger) else {
            continue;
        };
        let Some(alert) = alert.as_ref() else {
            continue;
        };
        let at = change.at();
        let transition = crate::dispatch::Transition { trigger, alert, at };
        for d in dispatcher.plan(
            std::slice::from_ref(&transition),
            now,
            &crate::store::Told::new(),
        ) {
            out.push(json!({
                "trigger": d.trigger, "alert_key": alert.key, "channel": d.channel, "channel_kind": d.channel_kind,
                "subscription_id": d.subscription_id, "status": d.status, "at": at,
                "send_at": d.next_attempt_at, "error": d.last_error,
            }));
        }
    }
    out
}

#[utoipa::path(get, path = "/api/v1/templates", tag = "rules",
    responses((status = 200, description = "rule templates the caller may instantiate, with their params schemas", body = ref("#/components/schemas/TemplateList"))))]
pub async fn list_templates(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    let rules = state.store.list_rules(None).await?;
    let users = state.store.list_users().await?;
    let shared = |owner: &str| users.iter().any(|u| u.name == owner && u.is_admin());
    let templates: Vec<Value> = rules
        .iter()
        .filter(|r| caller.sees(&r.owner) || shared(&r.owner))
        .filter_map(|r| match rule::parse_doc(r.doc.clone()) {
            Ok(RuleDoc::Template(t)) => Some(json!({
                "name": t.name, "owner": r.owner, "description": t.description, "params": t.params,
            })),
            _ => None,
        })
        .collect();
    Ok(Json(json!({ "templates": templates })))
}
