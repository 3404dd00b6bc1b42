//! The API reference page at `/api/docs`: served from the binary without a token (like the
//! OpenAPI document it renders), with every asset it names, and `/` leading there.

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION};

use crate::harness::Server;

/// The values of `attr="…"` in `html` that are paths on this server.
fn local_refs(html: &str, attr: &str) -> Vec<String> {
    html.split(&format!("{attr}=\""))
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|v| v.starts_with('/'))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn the_reference_page_and_its_assets_are_served_and_render_the_openapi_document() {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let get = |path: &str| http.get(format!("{}{path}", server.base)).send();

    let page = get("/api/docs").await.expect("the server answers");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ASCII")
            .starts_with("text/html")
    );
    let html = page.text().await.expect("a body");
    assert!(
        html.contains(r#"data-openapi="/api/v1/openapi.json""#),
        "{html}"
    );

    // Every script and stylesheet the page names is served, with its type.
    let scripts = local_refs(&html, "src");
    let links: Vec<String> = local_refs(&html, "href")
        .into_iter()
        .filter(|h| h.ends_with(".css"))
        .collect();
    assert_eq!(scripts, ["/api/docs/reference.js"]);
    assert_eq!(links, ["/api/docs/reference.css"]);
    for (path, kind) in [(&scripts[0], "text/javascript"), (&links[0], "text/css")] {
        let asset = get(path).await.expect("the server answers");
        assert_eq!(asset.status(), StatusCode::OK, "{path}");
        let content_type = asset.headers()[CONTENT_TYPE]
            .to_str()
            .expect("ASCII")
            .to_owned();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        let text = asset.text().await.expect("a body");
        assert!(!text.is_empty(), "{path}");
        if path.ends_with(".js") {
            // The script renders what the page's `data-openapi` names, and no other document.
            assert!(text.contains("data-openapi"), "{text}");
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "no outside assets"
            );
        }
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no outside assets"
    );

    // The document it renders is served without a token too, and has every operation.
    let doc: serde_json::Value = get("/api/v1/openapi.json")
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("JSON");
    assert!(doc["paths"]["/api/v1/alerts"]["get"].is_object());
}

#[tokio::test]
async fn the_root_leads_to_the_reference_and_unknown_paths_keep_the_error_shape() {
    let server = Server::start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let root = http
        .get(format!("{}/", server.base))
        .send()
        .await
        .expect("the server answers");
    assert!(root.status().is_redirection(), "{}", root.status());
    assert_eq!(root.headers()[LOCATION], "/api/docs");

    for path in ["/nope", "/api/docs/nope.js", "/api/v1/nope"] {
        let answer = http
            .get(format!("{}{path}", server.base))
            .send()
            .await
            .expect("the server answers");
        assert_eq!(answer.status(), StatusCode::NOT_FOUND, "{path}");
        let body: serde_json::Value = answer.json().await.expect("JSON");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}
