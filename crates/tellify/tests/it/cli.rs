//! The command line, rule files reloaded on change, and the server's own surface
//! (health, metrics, OpenAPI, the live stream).

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server, example, repo_root};

fn tellify(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tellify"))
        .args(args)
        .env_remove("TELLIFY_TOKEN")
        .output()
        .expect("tellify runs")
}

/// Every command's help describes each of its arguments and options, `serve --help` names the
/// variables that are no flag's, and `--config` promises nothing start-up refuses.
#[test]
fn help_describes_every_argument_and_option() {
    let commands: [&[&str]; 12] = [
        &[],
        &["serve"],
        &["send"],
        &["rules", "lint"],
        &["rules", "test"],
        &["rules", "apply"],
        &["rules", "export"],
        &["tokens", "create"],
        &["tokens", "revoke"],
        &["users", "add"],
        &["users", "list"],
        &["version"],
    ];
    for command in commands {
        let out = tellify(&[command, &["--help"]].concat());
        assert!(out.status.success(), "{command:?}");
        let help = String::from_utf8(out.stdout).expect("UTF-8");
        // clap lists each argument and option on a line of its own, its help after two spaces
        // or (when some help is long) on the next line, indented further.
        let lines: Vec<&str> = help.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let item = line.trim();
            let listed = line.starts_with("  ") && (item.starts_with('-') || item.starts_with('<'));
            if listed && !line.starts_with("        ") {
                let below = lines
                    .get(i + 1)
                    .is_some_and(|next| next.starts_with("          ") && !next.trim().is_empty());
                assert!(
                    item.contains("  ") || below,
                    "`tellify {}` has no description for `{item}`:\n{help}",
                    command.join(" ")
                );
            }
        }
    }
    let serve = String::from_utf8(tellify(&["serve", "--help"]).stdout).expect("UTF-8");
    for variable in [
        "TELLIFY_ADMIN_TOKEN",
        "TELLIFY_ADMIN_PASSWORD",
        "TELLIFY_DATA_DIR",
    ] {
        assert!(serve.contains(variable), "{variable} in:\n{serve}");
    }
    let config = serve
        .split("--config")
        .nth(1)
        .and_then(|rest| rest.split("\n      --").next())
        .expect("--config is described");
    assert!(config.contains("refuses a file with `sources`"), "{config}");
}

#[test]
fn rules_lint_passes_the_examples_and_points_at_errors() {
    let examples: Vec<String> = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples")
        .map(|e| e.expect("entry").path().display().to_string())
        .collect();
    let mut args = vec!["rules", "lint"];
    args.extend(examples.iter().map(String::as_str));
    let out = tellify(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("0 with errors"), "{stdout}");

    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "name: broken\nwhen: |\n  event.a > 1 &&\n  (event.b\n",
    )
    .expect("write");
    let out = tellify(&["rules", "lint", bad.to_str().expect("path")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("broken") && stdout.contains("line"),
        "{stdout}"
    );

    assert_eq!(
        tellify(&["rules", "lint", "--no-such-flag"]).status.code(),
        Some(2),
        "usage errors exit 2"
    );
}

#[test]
fn rules_test_runs_offline_over_an_event_file() {
    let events = repo_root().join("crates/tellify/tests/fixtures/keyvalue/builds.txt");
    let out = tellify(&[
        "rules",
        "test",
        example("builds.yaml").to_str().expect("path"),
        "--events",
        events.to_str().expect("path"),
        "--source",
        "builds",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let opened: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|c: &serde_json::Value| {
            c["change"] == "open" && c["alert"]["rule"] == "place-failures-per-run"
        })
        .collect();
    assert_eq!(opened.len(), 1, "{stdout}");
    assert_eq!(opened[0]["alert"]["key"], "r17");
}

#[tokio::test]
async fn send_apply_and_export_talk_to_a_server() {
    let mut server = Server::start().await;
    let base = server.base.clone();
    let run = |args: Vec<String>| {
        let base = base.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                Command::new(env!("CARGO_BIN_EXE_tellify"))
                    .args(&args)
                    .env("TELLIFY_SERVER", base)
                    .env("TELLIFY_TOKEN", ADMIN)
                    .output()
                    .expect("tellify runs")
            })
            .await
            .expect("joined")
        }
    };
    let rules = example("disk.yaml").display().to_string();
    let out = run(vec!["rules".into(), "apply".into(), rules.clone()]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("+ disk-usage-high") && stdout.contains("+ disk-usage-critical"),
        "{stdout}"
    );
    let again = run(vec!["rules".into(), "apply".into(), rules]).await;
    assert!(String::from_utf8_lossy(&again.stdout).contains("no changes"));

    let out = run(vec![
        "send".into(),
        "--source".into(),
        "disk".into(),
        "host:h1".into(),
        "fs:/".into(),
        "used_pct:99".into(),
        "kind:disk".into(),
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.settle().await;
    assert_eq!(
        server.alerts(ADMIN, "").await.len(),
        2,
        "both disk rules are pending"
    );

    // Another user's rule: the admin sees it in the list, but exports only their own unless
    // they name the user (documents carry no owner: `rules apply` makes them the token's).
    let bob = server.user("bob").await;
    server
        .rule(
            &bob,
            json!({"name": "bobs-rule", "source": "b", "when": "true"}),
        )
        .await;
    let out = run(vec!["rules".into(), "export".into()]).await;
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yaml.contains("name: disk-usage-high") && yaml.contains("for: 5m"),
        "{yaml}"
    );
    assert!(!yaml.contains("bobs-rule"), "{yaml}");
    let out = run(vec![
        "rules".into(),
        "export".into(),
        "--user".into(),
        "bob".into(),
    ])
    .await;
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(
        yaml.contains("name: bobs-rule") && !yaml.contains("disk-usage-high"),
        "{yaml}"
    );

    let out = run(vec![
        "send".into(),
        "--server".into(),
        "http://127.0.0.1:9".into(),
        "a:1".into(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "an unreachable server is a failure"
    );
}

#[tokio::test]
async fn rule_files_are_reloaded_when_they_change() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("rules.yaml");
    std::fs::write(
        &file,
        "name: one\nwhen: event.v > 1\n---\nname: two\nwhen: event.v > 2\n",
    )
    .expect("write");
    let mut server = Server::start_with(&["--rules", dir.path().to_str().expect("path")]).await;
    let names = |rules: serde_json::Value| -> Vec<String> {
        rules["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| r["name"].as_str().expect("name").to_owned())
            .collect()
    };
    let (_, rules) = server.get(ADMIN, "/api/v1/rules").await;
    assert_eq!(names(rules.clone()), vec!["one", "two"]);
    assert!(
        rules["rules"][0]["origin"]
            .as_str()
            .expect("origin")
            .starts_with("file:")
    );

    std::fs::write(
        &file,
        "name: one\nwhen: event.v > 10\n---\nname: three\nwhen: event.v > 3\n",
    )
    .expect("write");
    // The watcher polls every 2s; wait for it to notice, bounded.
    let mut seen = Vec::new();
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, rules) = server.get(ADMIN, "/api/v1/rules").await;
        seen = names(rules.clone());
        if seen == ["one", "three"] && rules["rules"][0]["when"] == "event.v > 10" {
            break;
        }
    }
    assert_eq!(seen, vec!["one", "three"]);

    // A broken file keeps the rules it had.
    std::fs::write(&file, "name: [unclosed\n").expect("write");
    // The barrier: the watcher has read the broken file (it says so), and the engine has
    // applied whatever that pass asked of it.
    let refused = "A rule file does not load; its previous rules stay.";
    for _ in 0..250 {
        if server.log().contains(refused) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(server.log().contains(refused), "{}", server.log());
    server.settle().await;
    let (_, rules) = server.get(ADMIN, "/api/v1/rules").await;
    assert_eq!(names(rules), vec!["one", "three"]);
}

#[tokio::test]
async fn health_metrics_openapi_and_the_live_stream() {
    let mut server = Server::start().await;
    let (status, health) = server.get("", "/healthz").await;
    assert!(status.is_success());
    assert_eq!(health["status"], "ok");
    let (status, ready) = server.get("", "/readyz").await;
    assert!(status.is_success(), "{ready}");

    let (status, doc) = server.get(ADMIN, "/api/v1/openapi.json").await;
    assert!(status.is_success());
    for path in [
        "/api/v1/events",
        "/api/v1/rules/{name}",
        "/api/v1/rules/{name}/test",
        "/api/v1/alerts",
        "/api/v1/stream",
        "/api/v1/tokens",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }

    let mut stream = server
        .http
        .get(format!("{}/api/v1/stream", server.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("stream")
        .bytes_stream();
    server
        .rule(
            ADMIN,
            json!({"name": "live", "source": "s", "when": "true", "summary": "live {{ event.n }}"}),
        )
        .await;
    server
        .send(ADMIN, "s", "application/json", r#"{"n": 7}"#)
        .await;
    server.settle().await;
    let mut text = String::new();
    while !text.contains("live 7") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event arrives")
            .expect("chunk")
            .expect("bytes");
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(text.contains("event: alert"), "{text}");

    let (_, metrics) = server.get(ADMIN, "/metrics").await;
    let metrics = metrics.as_str().expect("text").to_owned();
    assert!(
        metrics.contains("tellify_events_ingested_total{source=\"s\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tellify_alerts_fired_total{rule=\"live\",source=\"s\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tellify_alerts_open{severity=\"warning\"} 1"),
        "{metrics}"
    );

    let (status, body) = server.get(ADMIN, "/api/v1/nope").await;
    assert_eq!(status, reqwest::StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");

    let (_, stats) = server
        .get(ADMIN, "/api/v1/stats/alerts?group_by=source,rule")
        .await;
    assert_eq!(
        stats["groups"],
        json!([{"source": "s", "rule": "live", "alerts": 1}])
    );
}

#[tokio::test]
async fn demo_mode_loads_the_examples_and_shows_alerts_within_seconds() {
    let server = Server::start_with(&["--demo"]).await;
    let (_, rules) = server.get(ADMIN, "/api/v1/rules").await;
    let rules = rules["rules"].as_array().expect("rules").clone();
    // Every document of every example pack is loaded (a refused one is only a warning).
    let documents: usize = std::fs::read_dir(repo_root().join("examples"))
        .expect("examples")
        .map(|f| {
            let text = std::fs::read_to_string(f.expect("entry").path()).expect("example");
            serde_saphyr::from_multiple::<Value>(&text)
                .expect("YAML")
                .len()
        })
        .sum();
    assert_eq!(rules.len(), documents, "the example packs are loaded");
    assert!(rules.iter().all(|r| r["error"].is_null()), "{rules:#?}");
    // The demo feeds events on a real 2-second timer, so this waits on the wall clock.
    let failed = |firing: &[Value]| firing.iter().any(|a| a["rule"] == "dataos-job-failed");
    let mut firing = Vec::new();
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        firing = server.alerts(ADMIN, "status=firing").await;
        if failed(&firing) {
            break;
        }
    }
    assert!(failed(&firing), "{firing:#?}");
}
