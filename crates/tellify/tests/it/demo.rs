//! `--demo` keeps to its own data: without `--data-dir` it uses `./tellify-demo-data`, and it
//! refuses a data directory that holds anything it did not make, so a user's rules are neither
//! replaced nor fed its synthetic events. `--demo-on-existing-data` runs it there anyway,
//! keeping the user's rules as they are.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{ADMIN_TOKEN as ADMIN, Server};

/// A `tellify serve` started in `cwd` (no `--data-dir` unless `args` has one), on a free port.
struct Process {
    child: Child,
    base: String,
    log: std::sync::mpsc::Receiver<String>,
}

impl Process {
    /// Starts the server and waits for its banner; `Err` holds what it said if it exited.
    fn start(cwd: &Path, args: &[&str]) -> Result<Process, String> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tellify"))
            .current_dir(cwd)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("TELLIFY_ADMIN_TOKEN", ADMIN)
            .env("TELLIFY_ADMIN_PASSWORD", "test-password")
            .env_remove("TELLIFY_DATA_DIR")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tellify binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut said = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    said.push_str(&line);
                    said.push('\n');
                    if let Some(base) = line.strip_prefix("Tellify listening on ") {
                        return Ok(Process {
                            child,
                            base: base.trim().to_owned(),
                            log: rx,
                        });
                    }
                }
                // The pipe closed: the process ended without listening.
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().expect("wait");
                    assert!(!status.success(), "exited with success without serving");
                    return Err(said);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    panic!("the server neither started nor exited:\n{said}");
                }
            }
        }
    }

    /// The banner lines after the first, as printed so far.
    fn banner(&self) -> String {
        let mut out = String::new();
        while let Ok(line) = self.log.recv_timeout(Duration::from_millis(200)) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    async fn rules(&self) -> Vec<(String, String, Value)> {
        let answer: Value = reqwest::Client::new()
            .get(format!("{}/api/v1/rules", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("the server answers")
            .json()
            .await
            .expect("JSON");
        let mut rules: Vec<(String, String, Value)> = answer["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| {
                (
                    r["name"].as_str().expect("name").to_owned(),
                    r["origin"].as_str().expect("origin").to_owned(),
                    r["when"].clone(),
                )
            })
            .collect();
        rules.sort_by(|a, b| a.0.cmp(&b.0));
        rules
    }

    async fn put_rule(&self, rule: &Value) {
        let name = rule["name"].as_str().expect("name");
        let status = reqwest::Client::new()
            .put(format!("{}/api/v1/rules/{name}", self.base))
            .bearer_auth(ADMIN)
            .json(rule)
            .send()
            .await
            .expect("the server answers")
            .status();
        assert!(status.is_success(), "{status}");
    }

    fn stop(mut self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        assert!(self.child.wait().expect("wait").success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rule of the user's with the name of an example rule, and one of their own on a source
/// the demo feeds.
fn users_rules() -> [Value; 2] {
    [
        json!({"name": "disk-usage-high", "kind": "match", "source": "disk", "when": "event.used_pct > 50"}),
        json!({"name": "mine", "kind": "match", "source": "disk", "when": "true"}),
    ]
}

fn expected() -> Vec<(String, String, Value)> {
    vec![
        (
            "disk-usage-high".into(),
            "api".into(),
            json!("event.used_pct > 50"),
        ),
        ("mine".into(), "api".into(), json!("true")),
    ]
}

#[tokio::test]
async fn demo_without_data_dir_keeps_to_its_own_and_refuses_the_users() {
    let cwd = tempfile::tempdir().expect("temp dir");
    // The user's server, in the default ./tellify-data.
    let user = Process::start(cwd.path(), &[]).expect("serves");
    for rule in users_rules() {
        user.put_rule(&rule).await;
    }
    user.stop();

    // The demo, started the same way, uses ./tellify-demo-data and says so.
    let demo = Process::start(cwd.path(), &["--demo"]).expect("the demo serves");
    let banner = demo.banner();
    assert!(banner.contains("tellify-demo-data"), "{banner}");
    assert!(banner.contains("/api/docs"), "{banner}");
    let rules = demo.rules().await;
    assert!(rules.len() > 2, "the example rules are loaded: {rules:?}");
    assert!(
        rules
            .iter()
            .all(|(_, origin, _)| origin.starts_with("demo:")),
        "{rules:?}"
    );
    demo.stop();
    assert!(cwd.path().join("tellify-demo-data/tellify.db").exists());

    // Pointed at the user's data, it refuses before touching any rule.
    let refused = Process::start(cwd.path(), &["--demo", "--data-dir", "tellify-data"])
        .err()
        .expect("the demo refuses the user's data directory");
    assert!(refused.contains("--demo-on-existing-data"), "{refused}");

    // A second demo run on its own data is fine.
    Process::start(cwd.path(), &["--demo"])
        .expect("the demo serves again")
        .stop();

    let user = Process::start(cwd.path(), &[]).expect("serves");
    assert_eq!(
        user.rules().await,
        expected(),
        "the user's rules are as they were"
    );
    user.stop();
}

#[tokio::test]
async fn demo_on_existing_data_keeps_the_users_rules() {
    let mut server = Server::start().await;
    for rule in users_rules() {
        server.rule(ADMIN, rule).await;
    }
    assert!(server.terminate().success());
    let dir = server.data_dir.path().to_owned();
    let cwd = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.to_str().expect("a UTF-8 path");

    let demo = Process::start(
        cwd.path(),
        &["--demo", "--data-dir", data_dir, "--demo-on-existing-data"],
    )
    .expect("the demo serves when told to");
    let rules = demo.rules().await;
    let users: Vec<_> = rules
        .iter()
        .filter(|(_, origin, _)| !origin.starts_with("demo:"))
        .cloned()
        .collect();
    assert_eq!(
        users,
        expected(),
        "the example of the same name is left out"
    );
    assert!(rules.len() > 2, "the other examples are loaded: {rules:?}");
    demo.stop();
}
