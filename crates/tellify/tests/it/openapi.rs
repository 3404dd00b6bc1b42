//! The OpenAPI document is true: schemathesis (4.x, `--checks all`) runs over every operation
//! it describes against the real server, and finds nothing.
//!
//! schemathesis comes from PyPI (`scripts/test` installs it). The run is repeatable and bounded:
//! a fixed seed, a few examples per operation, one worker (CPython 3.11 fails inside
//! schemathesis now and then with two), about two minutes on two cores.
//!
//! Objects to find: before the run the test makes a rule with an open alert, a channel, a
//! subscription, a delivery and a silence, and hands their ids to schemathesis as dictionaries,
//! drawn for half of the cases; the other half are random ids, which must answer `404`.
//!
//! Destructive operations: revoking the token schemathesis uses would lock it out for the rest
//! of the run, so the run is in two parts. The first covers every operation but
//! `DELETE /api/v1/tokens/{id}`; the second covers that one alone, with tokens made for it
//! (and random ids). Everything else schemathesis may delete or change belongs to this
//! throwaway server.
//!
//! Every check runs on every operation, with three stated exceptions: operations whose bodies
//! hold code, templates or references may refuse schema-valid data with `400` ([`SEMANTIC`]);
//! a channel test answers the receiver's failure with `502` ([`RECEIVER_FAILS`]); deleting a
//! silence expires it, so it is still there afterwards. `SCHEMATHESIS` names another binary.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, free_port};

const SEED: &str = "20261202";
const MAX_EXAMPLES: &str = "15";

/// Operations whose bodies carry JavaScript, Jinja templates, event text, durations, URLs or
/// references to other objects: a schema says they are strings, not that they compile, parse
/// or exist, so the server may refuse schema-valid data with `400` saying what is wrong (and a
/// failed SMTP test email with `422`). Every other operation must accept every schema-valid
/// request.
const SEMANTIC: &str = r#"checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429"]"#;

/// A channel test answers `502` when the receiver fails, as documented: an error of the
/// receiver (here a port nothing listens on), not of the server.
const RECEIVER_FAILS: &str = r#"checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "502"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "502"]"#;

fn schemathesis() -> String {
    let bin = std::env::var("SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    match Command::new(&bin).arg("--version").output() {
        Ok(out) if out.status.success() => {
            let version = String::from_utf8_lossy(&out.stdout).to_string();
            assert!(
                version.contains("version 4."),
                "schemathesis 4.x is needed, found `{}`: python3 -m pip install 'schemathesis>=4,<5' \
                 (scripts/test does this)",
                version.trim()
            );
            bin
        }
        _ => panic!(
            "schemathesis is not installed (`{bin} --version` does not run): \
             python3 -m pip install 'schemathesis>=4,<5' (scripts/test does this)"
        ),
    }
}

/// One `[[operations]]` entry of the schemathesis config.
fn operation(path_regex: &str, checks: &str, bindings: &[(&str, &str)]) -> String {
    let mut out = format!("[[operations]]\ninclude-path-regex = '{path_regex}'\n{checks}\n");
    if !bindings.is_empty() {
        let items: Vec<String> = bindings
            .iter()
            .map(|(param, dict)| {
                format!("\"path.{param}\" = {{ dictionary = \"{dict}\", probability = 0.5 }}")
            })
            .collect();
        out.push_str(&format!("parameters = {{ {} }}\n", items.join(", ")));
    }
    out
}

fn dictionaries(dicts: &[(&str, Vec<String>)]) -> String {
    let mut out = String::new();
    for (name, values) in dicts {
        out.push_str(&format!(
            "[dictionaries.{name}]\nvalues = {}\n",
            serde_json::to_string(values).expect("strings serialize")
        ));
    }
    out
}

/// Runs schemathesis over the operations `args` select; fails with its report if it found
/// anything.
fn run(bin: &str, base: &str, dir: &Path, config: &str, token: &str, args: &[&str]) -> String {
    let file = dir.join("schemathesis.toml");
    std::fs::write(&file, config).expect("write the schemathesis config");
    let out = Command::new(bin)
        .arg("--config-file")
        .arg(&file)
        .arg("--no-color")
        .arg("run")
        .arg(format!("{base}/api/v1/openapi.json"))
        .args(["--checks", "all"])
        .args(["--seed", SEED])
        .args(["--max-examples", MAX_EXAMPLES])
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .args(["--suppress-health-check", "all"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(args)
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
        "schemathesis found mismatches between the OpenAPI document and the server \
         (config:\n{config})\n{report}"
    );
    assert!(
        report.contains(" passed"),
        "schemathesis tested nothing:\n{report}"
    );
    report
}

async fn created(server: &Server, token: &str, path: &str, body: Value) -> Value {
    let (status, answer) = server.post_json(token, path, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{path}: {answer}");
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_no_mismatch_between_the_document_and_the_server() {
    let bin = schemathesis();
    let mut server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");

    // schemathesis acts as an admin of its own, whose objects these are.
    created(
        &server,
        ADMIN,
        "/api/v1/users",
        json!({"name": "fuzz-admin", "role": "admin"}),
    )
    .await;
    let token = created(
        &server,
        ADMIN,
        "/api/v1/tokens",
        json!({"user": "fuzz-admin"}),
    )
    .await["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    // A channel to a port nothing listens on: its test answers 502, its deliveries wait.
    let (status, channel) = server
        .put_json(
            &token,
            "/api/v1/channels/fuzz-hook",
            &json!({"kind": "webhook", "url": format!("http://127.0.0.1:{}/hook", free_port())}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    let subscription = created(
        &server,
        &token,
        "/api/v1/subscriptions",
        json!({"channel": "fuzz-hook"}),
    )
    .await;
    let (status, rule) = server
        .put_json(
            &token,
            "/api/v1/rules/hot",
            &json!({"source": "fuzz", "when": "event.v > 1", "summary": "hot: {{ event.v }}"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    server
        .send(&token, "fuzz", "application/json", r#"{"v": 2}"#)
        .await;
    server.settle().await;
    let alerts = server.alerts(&token, "").await;
    let alert = alerts.first().expect("the rule fired")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let deliveries = server.deliveries(&token, "").await;
    let delivery = deliveries.first().expect("a delivery")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    let silence = created(
        &server,
        &token,
        "/api/v1/silences",
        json!({"matchers": {"rule": "cold"}, "ends_at": "2030-01-01T00:00:00Z"}),
    )
    .await;

    let dicts = dictionaries(&[
        ("rules", vec!["hot".into()]),
        ("channels", vec!["fuzz-hook".into()]),
        (
            "subscriptions",
            vec![subscription["id"].as_str().expect("id").into()],
        ),
        ("silences", vec![silence["id"].as_str().expect("id").into()]),
        ("alerts", vec![alert]),
        ("deliveries", vec![delivery]),
        ("users", vec!["fuzz-admin".into(), "admin".into()]),
        ("sources", vec!["fuzz".into()]),
    ]);
    let config = [
        dicts,
        operation(
            "^/api/v1/(events|rules/test|subscriptions|silences|config/smtp)$",
            SEMANTIC,
            &[],
        ),
        operation(
            "^/api/v1/rules/\\{name\\}(/test)?$",
            SEMANTIC,
            &[("name", "rules")],
        ),
        operation(
            "^/api/v1/channels/\\{name\\}$",
            SEMANTIC,
            &[("name", "channels")],
        ),
        operation(
            "^/api/v1/channels/\\{name\\}/test$",
            RECEIVER_FAILS,
            &[("name", "channels")],
        ),
        operation(
            "^/api/v1/subscriptions/\\{id\\}$",
            SEMANTIC,
            &[("id", "subscriptions")],
        ),
        // Deleting a silence expires it, as in Alertmanager: it stays listed and readable,
        // `expired`, so that the alerts it held back are notified. Not a use after free.
        operation(
            "^/api/v1/silences/\\{id\\}$",
            "checks.use_after_free.enabled = false",
            &[("id", "silences")],
        ),
        operation("^/api/v1/alerts/\\{id\\}", "", &[("id", "alerts")]),
        operation("^/api/v1/deliveries/\\{id\\}", "", &[("id", "deliveries")]),
        operation("^/api/v1/users/\\{name\\}$", "", &[("name", "users")]),
        operation(
            "^/api/v1/topics/\\{source\\}$",
            "",
            &[("source", "sources")],
        ),
    ]
    .join("\n");
    let base = server.base.clone();
    let (bin2, dir2, token2) = (bin.clone(), dir.path().to_owned(), token.clone());
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        run(
            &bin2,
            &base,
            &dir2,
            &config,
            &token2,
            &["--exclude-path", "/api/v1/tokens/{id}"],
        )
    })
    .await
    .expect("the first part finishes");
    eprintln!(
        "schemathesis, every operation but token revocation: {:?}",
        started.elapsed()
    );

    // The second part: revoking tokens, of a user of their own.
    created(
        &server,
        ADMIN,
        "/api/v1/users",
        json!({"name": "fuzz-user"}),
    )
    .await;
    let mut victims = Vec::new();
    for _ in 0..3 {
        let answer = created(
            &server,
            ADMIN,
            "/api/v1/tokens",
            json!({"user": "fuzz-user"}),
        )
        .await;
        victims.push(answer["id"].as_str().expect("an id").to_owned());
    }
    let config = [
        dictionaries(&[("tokens", victims.clone())]),
        operation("^/api/v1/tokens/\\{id\\}$", "", &[("id", "tokens")]),
    ]
    .join("\n");
    let base = server.base.clone();
    let (dir2, token2) = (dir.path().to_owned(), token.clone());
    tokio::task::spawn_blocking(move || {
        run(
            &bin,
            &base,
            &dir2,
            &config,
            &token2,
            &["--include-path", "/api/v1/tokens/{id}"],
        )
    })
    .await
    .expect("the second part finishes");
    // It did revoke them, and not the token it used.
    let (status, tokens) = server.get(&token, "/api/v1/tokens").await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let left: Vec<&str> = tokens["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    assert!(
        victims.iter().any(|v| !left.contains(&v.as_str())),
        "no token was revoked: {tokens}"
    );
}
