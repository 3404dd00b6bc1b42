//! `/api/v1/silences…`: mute matching alerts for a time range. Deleting a silence expires it
//! (its record stays, with `ends_at` now), so the alerts it held back are notified.

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tellify_core::silence::{Matchers, Silence};

use super::extract::{Json, NoParams, Path, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::store::SilenceRow;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSilence {
    pub matchers: Matchers,
    /// RFC 3339; default now.
    pub starts_at: Option<String>,
    pub ends_at: String,
    #[serde(default)]
    pub comment: String,
}

fn time(field: &str, v: &str) -> ApiResult<i64> {
    chrono::DateTime::parse_from_rfc3339(v)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            ApiError::bad_request(
                "invalid_silence",
                format!("`{field}` must be an RFC 3339 time"),
            )
        })
}

fn view(row: &SilenceRow, now: i64) -> Value {
    let state = if now < row.starts_at {
        "pending"
    } else if now < row.ends_at {
        "active"
    } else {
        "expired"
    };
    let mut v = serde_json::to_value(row).unwrap_or(Value::Null);
    v["state"] = json!(state);
    v["created_by"] = json!(row.owner);
    v
}

#[utoipa::path(get, path = "/api/v1/silences", tag = "notifications", operation_id = "list_silences",
    responses((status = 200, description = "the caller's silences (admins: all)", body = ref("#/components/schemas/SilenceList"))))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    let now = state.clock.now();
    let rows = state
        .outbox
        .list_silences(caller.scope().as_deref())
        .await?;
    Ok(Json(
        json!({ "silences": rows.iter().map(|r| view(r, now)).collect::<Vec<_>>() }),
    ))
}

#[utoipa::path(post, path = "/api/v1/silences", tag = "notifications", operation_id = "create_silence",
    request_body(content = ref("#/components/schemas/NewSilence"), content_type = "application/json"),
    responses((status = 201, description = "created, with its id", body = ref("#/components/schemas/Silence")),
              (status = 400, description = "invalid (`invalid_silence`): e.g. `ends_at` not after `starts_at`"),
              (status = 415, description = "the body is not `application/json`")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    // Read here rather than by the extractor, so an error names the field in our words.
    let body: NewSilence = tellify_core::fields::from_json(body)
        .map_err(|e| ApiError::bad_request("invalid_silence", e.to_string()))?;
    let now = state.clock.now();
    let starts_at = match &body.starts_at {
        Some(t) => time("starts_at", t)?,
        None => now,
    };
    let ends_at = time("ends_at", &body.ends_at)?;
    Silence::new(&caller.user.name, &body.matchers, starts_at, ends_at)
        .map_err(|m| ApiError::bad_request("invalid_silence", m))?;
    let row = SilenceRow {
        id: format!("sil_{}", uuid::Uuid::now_v7().simple()),
        owner: caller.user.name.clone(),
        matchers: serde_json::to_value(&body.matchers).map_err(|e| ApiError::internal(e.into()))?,
        starts_at,
        ends_at,
        comment: body.comment,
        created_at: now,
    };
    state.outbox.put_silence(&row).await?;
    state.engine.notify_settings_changed().await;
    state
        .store
        .audit(&caller.user.name, "silence.create", &row.id, None, now)
        .await?;
    Ok((StatusCode::CREATED, Json(view(&row, now))))
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<SilenceRow> {
    match state.outbox.get_silence(id).await? {
        Some(row) if caller.sees(&row.owner) => Ok(row),
        _ => Err(ApiError::not_found("silence")),
    }
}

#[utoipa::path(get, path = "/api/v1/silences/{id}", tag = "notifications", operation_id = "get_silence",
    params(("id" = String, Path, description = "silence id")),
    responses((status = 200, description = "the silence", body = ref("#/components/schemas/Silence"))))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(view(
        &find(&state, &caller, &id).await?,
        state.clock.now(),
    )))
}

#[utoipa::path(delete, path = "/api/v1/silences/{id}", tag = "notifications", operation_id = "expire_silence",
    params(("id" = String, Path, description = "silence id")),
    responses((status = 204, description = "expired now")))]
pub async fn expire(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let mut row = find(&state, &caller, &id).await?;
    let now = state.clock.now();
    if row.ends_at > now {
        row.ends_at = now.max(row.starts_at + 1);
        state.outbox.delete_silence(&id).await?;
        state.outbox.put_silence(&row).await?;
        state.engine.notify_settings_changed().await;
    }
    state
        .store
        .audit(&caller.user.name, "silence.expire", &id, None, now)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
