//! The pages the server serves besides the API: the API reference at `/api/docs`, which
//! renders the OpenAPI document (`/api/v1/openapi.json`) in the browser, and `/`, which leads
//! there. Every asset is built into the binary, so the page works without the internet.
//!
//! Like the OpenAPI document, these pages are public: they describe the API, and every
//! operation they show still needs a token.

use axum::http::header;
use axum::response::{IntoResponse, Redirect};

/// Where the API reference is served.
pub const DOCS: &str = "/api/docs";

const HTML: &str = include_str!("reference.html");
const SCRIPT: &str = include_str!("reference.js");
const STYLE: &str = include_str!("reference.css");

/// `GET /`: there is no dashboard yet, so the root leads to the API reference.
pub async fn root() -> Redirect {
    Redirect::to(DOCS)
}

/// `GET /api/docs`: the API reference page.
pub async fn page() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], HTML)
}

/// `GET /api/docs/reference.js`: renders the OpenAPI document.
pub async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
}

/// `GET /api/docs/reference.css`.
pub async fn style() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}
