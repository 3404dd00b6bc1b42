//! `/api/v1/deliveries…`: the outbox, and retrying dead deliveries.

use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Json, Path, Query};
use super::{ApiError, ApiResult, AppState, Caller};
use crate::store::{Delivery, DeliveryFilter};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// pending, held, sending, sent, dead, silenced.
    pub status: Option<String>,
    pub alert: Option<String>,
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/deliveries", tag = "notifications", operation_id = "list_deliveries",
    params(("status" = Option<String>, Query, description = "pending | held | sending | sent | dead | silenced", pattern = "^(pending|held|sending|sent|dead|silenced)$"),
           ("alert" = Option<String>, Query, description = "alert id"),
           ("limit" = Option<i64>, Query, description = "page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000),
           ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page", pattern = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32})$")),
    responses((status = 200, description = "newest first", body = ref("#/components/schemas/DeliveryList"))))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    const STATUSES: [&str; 6] = ["pending", "held", "sending", "sent", "dead", "silenced"];
    if let Some(s) = &q.status
        && !STATUSES.contains(&s.as_str())
    {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("`status` must be one of {}", STATUSES.join(", ")),
        ));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_request",
            "`limit` must be 1 to 1000",
        ));
    }
    // A cursor is the id of the last delivery of the previous page.
    let before = q
        .cursor
        .map(|c| {
            uuid::Uuid::try_parse(&c)
                .map(|id| id.hyphenated().to_string())
                .map_err(|_| {
                    ApiError::bad_request(
                        "bad_request",
                        "`cursor` is not one this server gave: pass `next_cursor` of the previous page",
                    )
                })
        })
        .transpose()?;
    let filter = DeliveryFilter {
        owner: caller.scope(),
        status: q.status,
        alert_id: q.alert,
        limit,
        before,
    };
    let deliveries = state.outbox.list_deliveries(&filter).await?;
    let next_cursor = (deliveries.len() as i64 == limit)
        .then(|| deliveries.last().map(|d| d.id.clone()))
        .flatten();
    Ok(Json(
        json!({ "deliveries": deliveries, "next_cursor": next_cursor }),
    ))
}

async fn find(state: &AppState, caller: &Caller, id: &str) -> ApiResult<Delivery> {
    match state.outbox.get_delivery(id).await? {
        Some(d) if caller.sees(&d.owner) => Ok(d),
        _ => Err(ApiError::not_found("delivery")),
    }
}

#[utoipa::path(get, path = "/api/v1/deliveries/{id}", tag = "notifications", operation_id = "get_delivery",
    params(("id" = String, Path, description = "delivery id")),
    responses((status = 200, description = "the delivery", body = Delivery)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Delivery>> {
    Ok(Json(find(&state, &caller, &id).await?))
}

/// Sends a dead delivery again, from its first attempt.
#[utoipa::path(post, path = "/api/v1/deliveries/{id}/retry", tag = "notifications", operation_id = "retry_delivery",
    params(("id" = String, Path, description = "delivery id")),
    responses((status = 200, description = "queued again", body = Delivery),
              (status = 409, description = "only a dead delivery can be retried")))]
pub async fn retry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Delivery>> {
    find(&state, &caller, &id).await?;
    let now = state.clock.now();
    if !state.outbox.retry_delivery(&id, now).await? {
        return Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "conflict",
            "only a dead delivery can be retried",
        ));
    }
    state.wake.notify_one();
    state
        .store
        .audit(&caller.user.name, "delivery.retry", &id, None, now)
        .await?;
    Ok(Json(find(&state, &caller, &id).await?))
}
