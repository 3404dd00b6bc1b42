//! The OpenAPI document of `/api/v1`, generated from the handlers' annotations (utoipa).

use axum::Json;
use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(title = "Tellify", description = "Self-hosted event alerting server: events in, rules, alerts, notifications."),
    paths(
        crate::sources::http::post_events,
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
    components(schemas(crate::store::Alert, crate::store::User, crate::store::Delivery, super::users::NewUser, super::users::NewToken)),
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
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
