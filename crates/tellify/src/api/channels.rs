//! `/api/v1/channels…`: where notifications go. A channel is one flat object — `name`, `kind`
//! and that kind's settings — whose secrets are write-only and sealed at rest.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tellify_core::subscription::Trigger;

use super::extract::{Json, NoParams, Path, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::notify::{Notification, channel};
use crate::store::ChannelRow;
use crate::wire::Alert;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerQuery {
    pub owner: Option<String>,
}

fn view(state: &AppState, c: &ChannelRow) -> Value {
    let mut out = match &c.settings {
        Value::Object(m) => channel::hide(&c.kind, m.clone()),
        _ => Map::new(),
    };
    out.insert("name".into(), json!(c.name));
    out.insert("kind".into(), json!(c.kind));
    out.insert("owner".into(), json!(c.owner));
    out.insert("shared".into(), json!(c.shared));
    out.insert("created_at".into(), json!(c.created_at));
    out.insert("updated_at".into(), json!(c.updated_at));
    let circuit = state
        .breakers
        .circuit(&(c.owner.clone(), c.name.clone()), state.clock.now());
    out.insert("circuit".into(), json!(circuit));
    Value::Object(out)
}

/// The caller's channels and the shared ones (admins: all).
#[utoipa::path(get, path = "/api/v1/channels", tag = "notifications",
    responses((status = 200, description = "the caller's channels and the shared ones (admins: all), secrets shown as `***`", body = ref("#/components/schemas/ChannelList"))))]
pub async fn list_channels(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    let rows = state
        .outbox
        .list_channels(caller.scope().as_deref(), true)
        .await?;
    Ok(Json(
        json!({ "channels": rows.iter().map(|c| view(&state, c)).collect::<Vec<_>>() }),
    ))
}

/// A channel the caller may use: their own, or (to read) a shared one.
async fn find(
    state: &AppState,
    caller: &Caller,
    owner: Option<&str>,
    name: &str,
) -> ApiResult<ChannelRow> {
    let owner = match owner {
        Some(o) if !caller.sees(o) => return Err(ApiError::not_found("channel")),
        Some(o) => o.to_owned(),
        None => caller.user.name.clone(),
    };
    state
        .outbox
        .get_channel(&owner, name)
        .await?
        .ok_or_else(|| ApiError::not_found("channel"))
}

#[utoipa::path(get, path = "/api/v1/channels/{name}", tag = "notifications",
    params(("name" = String, Path, description = "channel name", pattern = r"^[^\x00-\x1F\x7F-\x9F]+$"), ("owner" = Option<String>, Query, description = "admins: the user whose object this is (default: the caller)")),
    responses((status = 200, description = "the channel, secrets shown as `***`", body = ref("#/components/schemas/Channel"))))]
pub async fn get_channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<OwnerQuery>,
) -> ApiResult<Json<Value>> {
    let row = find(&state, &caller, q.owner.as_deref(), &name).await?;
    Ok(Json(view(&state, &row)))
}

/// Creates or replaces a channel. Secrets left out or sent as `***` keep their stored value.
#[utoipa::path(put, path = "/api/v1/channels/{name}", tag = "notifications",
    params(("name" = String, Path, description = "channel name: 1 to 100 letters, digits and `._-`", pattern = r"^[^\x00-\x1F\x7F-\x9F]+$"), ("owner" = Option<String>, Query, description = "admins: the user whose object this is (default: the caller)")),
    request_body(content = ref("#/components/schemas/ChannelSettings"), content_type = "application/json"),
    responses((status = 200, description = "replaced", body = ref("#/components/schemas/Channel")),
              (status = 201, description = "created", body = ref("#/components/schemas/Channel")),
              (status = 400, description = "invalid name or settings (`invalid_channel`)"),
              (status = 403, description = "a shared channel, or another user's, and the caller is not an admin"),
              (status = 415, description = "the body is not `application/json`")))]
pub async fn put_channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<OwnerQuery>,
    Json(body): Json<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let owner = caller.acting_for(q.owner.as_deref())?;
    let Value::Object(mut settings) = body else {
        return Err(ApiError::bad_request(
            "invalid_channel",
            "a channel must be a JSON object",
        ));
    };
    let valid_name = tellify_core::rule::check_name(&name, 100).is_ok()
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || "._-".contains(c));
    if !valid_name {
        return Err(ApiError::bad_request(
            "invalid_channel",
            "a channel name is 1 to 100 letters, digits and `._-`",
        ));
    }
    // Read-only fields of a read, so a channel can be read, edited and sent back.
    for field in ["owner", "created_at", "updated_at", "circuit"] {
        settings.remove(field);
    }
    if settings.remove("name").is_some_and(|n| n != json!(name)) {
        return Err(ApiError::bad_request(
            "invalid_channel",
            "the channel's `name` differs from the name in the path",
        ));
    }
    let stored = state.outbox.get_channel(&owner, &name).await?;
    let kind = match settings.remove("kind") {
        Some(Value::String(k)) => k,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_channel",
                "`kind` must be a string",
            ));
        }
        None => stored.as_ref().map(|c| c.kind.clone()).ok_or_else(|| {
            ApiError::bad_request("invalid_channel", "a new channel needs `kind`")
        })?,
    };
    let shared = match settings.remove("shared") {
        None => stored.as_ref().is_some_and(|c| c.shared),
        Some(Value::Bool(b)) => b,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_channel",
                "`shared` must be true or false",
            ));
        }
    };
    if shared && !caller.user.is_admin() {
        return Err(ApiError::forbidden("only admins make shared channels"));
    }
    // The stored settings of the same kind, opened: the secrets this update keeps.
    let old_settings = match stored.as_ref().filter(|c| c.kind == kind) {
        Some(c) => match &c.settings {
            Value::Object(m) => Some(channel::open(&kind, m.clone(), &state.keys)?),
            _ => None,
        },
        None => None,
    };
    let plain = channel::resolve(&kind, settings, old_settings.as_ref())
        .map_err(|m| ApiError::bad_request("invalid_channel", m))?;
    let sealed = channel::seal(&kind, plain, &state.keys);
    let now = state.clock.now();
    let row = ChannelRow {
        owner: owner.clone(),
        name: name.clone(),
        kind,
        settings: Value::Object(sealed),
        shared,
        created_at: stored.as_ref().map_or(now, |c| c.created_at),
        updated_at: now,
    };
    let created = state.outbox.put_channel(&row).await?;
    state.engine.notify_settings_changed().await;
    state
        .store
        .audit(
            &caller.user.name,
            "channel.put",
            &format!("{owner}/{name}"),
            None,
            now,
        )
        .await?;
    Ok((
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(view(&state, &row)),
    ))
}

#[utoipa::path(delete, path = "/api/v1/channels/{name}", tag = "notifications",
    params(("name" = String, Path, description = "channel name", pattern = r"^[^\x00-\x1F\x7F-\x9F]+$"), ("owner" = Option<String>, Query, description = "admins: the user whose object this is (default: the caller)")),
    responses((status = 204, description = "deleted")))]
pub async fn delete_channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<OwnerQuery>,
) -> ApiResult<StatusCode> {
    let row = find(&state, &caller, q.owner.as_deref(), &name).await?;
    state.outbox.delete_channel(&row.owner, &name).await?;
    state
        .breakers
        .remove(&(row.owner.clone(), name.clone()), &state.metrics);
    state.engine.notify_settings_changed().await;
    state
        .store
        .audit(
            &caller.user.name,
            "channel.delete",
            &format!("{}/{name}", row.owner),
            None,
            state.clock.now(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Sends a test notification now and says how it went.
#[utoipa::path(post, path = "/api/v1/channels/{name}/test", tag = "notifications",
    params(("name" = String, Path, description = "channel name", pattern = r"^[^\x00-\x1F\x7F-\x9F]+$"), ("owner" = Option<String>, Query, description = "admins: the user whose object this is (default: the caller)")),
    responses((status = 200, description = "sent", body = ref("#/components/schemas/ChannelTest")),
              (status = 400, description = "this kind of channel cannot send in this version"),
              (status = 502, description = "the receiver refused or could not be reached (`delivery_failed`, with `retryable`)")))]
pub async fn test_channel(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    Query(q): Query<OwnerQuery>,
) -> ApiResult<Json<Value>> {
    let row = find(&state, &caller, q.owner.as_deref(), &name).await?;
    if channel::kind(&row.kind).is_none() {
        return Err(ApiError::bad_request(
            "unsupported",
            format!("`{}` channels cannot send in this version", row.kind),
        ));
    }
    let settings = match &row.settings {
        Value::Object(m) => channel::open(&row.kind, m.clone(), &state.keys)?,
        _ => Map::new(),
    };
    let now = state.clock.now();
    let alert = Alert {
        id: format!("test-{}", uuid::Uuid::now_v7()),
        rule: "tellify-test".into(),
        owner: caller.user.name.clone(),
        key: name.clone(),
        status: "firing".into(),
        severity: "info".into(),
        summary: format!("Test notification to channel {name}"),
        body: "If you can read this, the channel works.".into(),
        value: None,
        labels: Default::default(),
        links: Default::default(),
        source: "tellify".into(),
        run: None,
        first_seen: now,
        fired_at: Some(now),
        last_seen: now,
        resolved_at: None,
        resolve_reason: None,
        count: 1,
        acked_by: None,
        acked_at: None,
    };
    let n = Notification {
        id: alert.id.clone(),
        trigger: Trigger::Fire,
        alerts: vec![alert],
        triggers: Vec::new(),
        digest: false,
        format: None,
        template: None,
    };
    let sent = match state.senders.notifier(&row.kind, &settings) {
        Ok(notifier) => crate::notify::send_in_time(notifier.as_ref(), &n).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => Ok(Json(json!({ "sent": true }))),
        Err(e) => Err(
            ApiError::new(StatusCode::BAD_GATEWAY, "delivery_failed", e.message)
                .with("retryable", e.retryable),
        ),
    }
}
