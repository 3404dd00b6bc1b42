//! `/api/v1/subscriptions…`: which of a user's alerts go to which channel, and when.

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};
use tellify_core::subscription::SubscriptionSpec;

use super::extract::{Json, NoParams, Path, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::dispatch::Dispatcher;
use crate::store::SubscriptionRow;

fn view(row: &SubscriptionRow) -> Value {
    let mut out = row.spec.as_object().cloned().unwrap_or_default();
    out.insert("id".into(), json!(row.id));
    out.insert("owner".into(), json!(row.owner));
    out.insert("created_at".into(), json!(row.created_at));
    out.insert("updated_at".into(), json!(row.updated_at));
    Value::Object(out)
}

/// Parses and checks a subscription, including that its channel exists for the owner.
async fn checked(state: &AppState, owner: &str, mut body: Value) -> ApiResult<Value> {
    if let Value::Object(m) = &mut body {
        for f in ["id", "owner", "created_at", "updated_at"] {
            m.remove(f);
        }
    }
    let spec = SubscriptionSpec::from_json(body)
        .map_err(|m| ApiError::bad_request("invalid_subscription", m))?;
    Dispatcher::check(state.limits, &spec)
        .map_err(|m| ApiError::bad_request("invalid_subscription", m))?;
    let own = state
        .outbox
        .get_channel(owner, &spec.channel)
        .await?
        .is_some();
    let shared = || async {
        state
            .outbox
            .list_channels(Some(owner), true)
            .await
            .map(|cs| cs.iter().any(|c| c.name == spec.channel && c.shared))
    };
    if !own && !shared().await? {
        return Err(ApiError::bad_request(
            "invalid_subscription",
            format!("`channel`: there is no channel named `{}`", spec.channel),
        ));
    }
    serde_json::to_value(&spec).map_err(|e| ApiError::internal(e.into()))
}

#[utoipa::path(get, path = "/api/v1/subscriptions", tag = "notifications", operation_id = "list_subscriptions",
    responses((status = 200, description = "the caller's subscriptions (admins: all)", body = ref("#/components/schemas/SubscriptionList"))))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    _: Query<NoParams>,
) -> ApiResult<Json<Value>> {
    let rows = state
        .outbox
        .list_subscriptions(caller.scope().as_deref())
        .await?;
    Ok(Json(
        json!({ "subscriptions": rows.iter().map(view).collect::<Vec<_>>() }),
    ))
}

#[utoipa::path(post, path = "/api/v1/subscriptions", tag = "notifications", operation_id = "create_subscription",
    request_body(content = ref("#/components/schemas/NewSubscription"), content_type = "application/json"),
    responses((status = 201, description = "created, with its id", body = ref("#/components/schemas/Subscription")),
              (status = 400, description = "invalid (`invalid_subscription`)"),
              (status = 415, description = "the body is not `application/json`")))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    Json(body): Json<Value>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let owner = caller.user.name.clone();
    let spec = checked(&state, &owner, body).await?;
    let now = state.clock.now();
    let row = SubscriptionRow {
        id: format!("sub_{}", uuid::Uuid::now_v7().simple()),
        owner,
        spec,
        origin: "api".into(),
        created_at: now,
        updated_at: now,
    };
    state.outbox.put_subscription(&row).await?;
    state.engine.notify_settings_changed().await;
    state
        .store
        .audit(&caller.user.name, "subscription.create", &row.id, None, now)
        .await?;
    Ok((StatusCode::CREATED, Json(view(&row))))
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<SubscriptionRow> {
    match state.outbox.get_subscription(id).await? {
        Some(row) if caller.sees(&row.owner) => Ok(row),
        _ => Err(ApiError::not_found("subscription")),
    }
}

#[utoipa::path(get, path = "/api/v1/subscriptions/{id}", tag = "notifications", operation_id = "get_subscription",
    params(("id" = String, Path, description = "subscription id")),
    responses((status = 200, description = "the subscription", body = ref("#/components/schemas/Subscription"))))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(view(&find(&state, &caller, &id).await?)))
}

#[utoipa::path(put, path = "/api/v1/subscriptions/{id}", tag = "notifications", operation_id = "update_subscription",
    params(("id" = String, Path, description = "subscription id")),
    request_body(content = ref("#/components/schemas/NewSubscription"), content_type = "application/json"),
    responses((status = 200, description = "replaced", body = ref("#/components/schemas/Subscription")),
              (status = 400, description = "invalid (`invalid_subscription`)"),
              (status = 415, description = "the body is not `application/json`")))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> ApiResult<Json<Value>> {
    let mut row = find(&state, &caller, &id).await?;
    row.spec = checked(&state, &row.owner, body).await?;
    row.updated_at = state.clock.now();
    state.outbox.put_subscription(&row).await?;
    state.engine.notify_settings_changed().await;
    state
        .store
        .audit(
            &caller.user.name,
            "subscription.update",
            &id,
            None,
            row.updated_at,
        )
        .await?;
    Ok(Json(view(&row)))
}

#[utoipa::path(delete, path = "/api/v1/subscriptions/{id}", tag = "notifications", operation_id = "delete_subscription",
    params(("id" = String, Path, description = "subscription id")),
    responses((status = 204, description = "deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    find(&state, &caller, &id).await?;
    state.outbox.delete_subscription(&id).await?;
    state.engine.notify_settings_changed().await;
    state
        .store
        .audit(
            &caller.user.name,
            "subscription.delete",
            &id,
            None,
            state.clock.now(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
