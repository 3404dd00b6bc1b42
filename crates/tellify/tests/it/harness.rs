//! Starts and stops the real server. Time is injected: each server runs on a manual clock
//! (`TELLIFY_FAKE_CLOCK`) that tests move with [`Server::advance`], which also waits until the
//! engine has evaluated and committed everything sent before it — so no test sleeps for time
//! to pass (see ARCHITECTURE.md, "Testing", for the few wall-clock waits).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

pub const ADMIN_TOKEN: &str = "tfy_test_admin_token_0123456789";
/// 2026-11-25T10:00:00Z, a Wednesday.
pub const T0: i64 = 1_795_600_800_000;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(path: &str) -> String {
    let p = repo_root().join("crates/tellify/tests/fixtures").join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples").join(name)
}

/// A port nothing listens on (a receiver that is down, or one to start later).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

pub struct Server {
    child: Child,
    pub base: String,
    pub data_dir: Arc<tempfile::TempDir>,
    pub http: reqwest::Client,
    pub now: i64,
    args: Vec<String>,
    log: Arc<Mutex<String>>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(&[]).await
    }

    /// Starts with the clock at `now` (epoch ms) instead of [`T0`].
    pub async fn start_at(now: i64, args: &[&str]) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::spawn(dir, args.iter().map(|s| s.to_string()).collect(), now)
    }

    pub async fn start_with(args: &[&str]) -> Server {
        let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
        Self::spawn(dir, args.iter().map(|s| s.to_string()).collect(), T0)
    }

    /// Starts with the data directory `dir` (a folder on a filesystem the test made).
    pub async fn start_in(dir: tempfile::TempDir, args: &[&str]) -> Server {
        Self::spawn(
            Arc::new(dir),
            args.iter().map(|s| s.to_string()).collect(),
            T0,
        )
    }

    fn spawn(data_dir: Arc<tempfile::TempDir>, args: Vec<String>, now: i64) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tellify"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(&args)
            .env("TELLIFY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("TELLIFY_ADMIN_PASSWORD", "test-password")
            .env("TELLIFY_FAKE_CLOCK", now.to_string())
            // Warnings, and the milestones tests read back: the engine's restore (how many
            // events it replayed) and the stop ("Shutting down.", "Stopped.").
            .env("RUST_LOG", "warn,tellify::app=info,tellify::engine=info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tellify binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        // Keep draining stderr for the server's whole life, or it blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("Tellify listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the server did not start:\n{}",
                    log.lock().expect("log lock")
                );
            }
        };
        Server {
            child,
            base,
            data_dir,
            http: reqwest::Client::new(),
            now,
            args,
            log,
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would, and starts it again on the same
    /// data with the clock where it was.
    pub fn crash_and_restart(mut self) -> Server {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
        let (dir, args, now) = (self.data_dir.clone(), self.args.clone(), self.now);
        Self::spawn(dir, args, now)
    }

    /// Kills the process at once (SIGKILL), as a crash would, leaving its data as it was at
    /// that instant for the test to read; [`Server::restart`] starts it again.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }

    /// What the server logged so far (see `spawn` for the levels), without colours.
    pub fn log(&self) -> String {
        let log = self.log.lock().expect("log lock").clone();
        // Strip ANSI colour sequences, should the logger use them despite NO_COLOR.
        let mut plain = String::with_capacity(log.len());
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// How many events the engine replayed from the log when it last started: the
    /// `replayed_events` of its latest "Engine restored." line.
    pub fn replayed_at_start(&self) -> u64 {
        let log = self.log();
        let line = log
            .lines()
            .rfind(|l| l.contains("Engine restored."))
            .unwrap_or_else(|| panic!("no \"Engine restored.\" line in the log:\n{log}"));
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("replayed_events="))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no replayed_events in {line}"))
    }

    /// A read-only connection to the server's SQLite database, as another process would
    /// open it (also while the server runs, or after it was killed).
    pub async fn database(&self) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let db = self.data_dir.path().join("tellify.db");
        sqlx::SqliteConnection::connect(&format!("sqlite://{}?mode=ro", db.display()))
            .await
            .expect("open the database")
    }

    /// Where the engine is in the event log, read from the database: its checkpoint (the last
    /// seq it evaluated and committed) and the log's head (the last seq stored).
    pub async fn engine_position(&self) -> Position {
        use sqlx::Row;
        let mut db = self.database().await;
        let row = sqlx::query(
            "SELECT (SELECT checkpoint FROM engine WHERE id = 1),
                    (SELECT COALESCE(MAX(seq), 0) FROM events)",
        )
        .fetch_one(&mut db)
        .await
        .expect("the engine's position");
        Position {
            checkpoint: row.get(0),
            head: row.get(1),
        }
    }

    /// The stored events after the checkpoint, by source: what a restart has to replay.
    pub async fn events_behind(&self, source: &str) -> i64 {
        use sqlx::Row;
        let mut db = self.database().await;
        sqlx::query(
            "SELECT COUNT(*) FROM events
             WHERE source = ? AND seq > (SELECT checkpoint FROM engine WHERE id = 1)",
        )
        .bind(source)
        .fetch_one(&mut db)
        .await
        .expect("events behind")
        .get(0)
    }

    /// Saves a rule on source `gate` whose every event keeps the engine busy on the wall clock
    /// until the event's `until` (epoch ms), so events sent meanwhile are accepted (202) and
    /// stored but wait in the engine's queue. The server needs `GATE_ARGS`. See [`Server::gate`].
    /// It relies on scripts' `Date.now()` being the wall clock, not the injected one: one of
    /// the few wall-clock waits of the suite, bounded by the `ms` a test gives.
    pub async fn gate_rule(&self) {
        self.rule(
            ADMIN_TOKEN,
            json!({"name": "gate", "source": "gate",
                "when": "while (Date.now() < event.until) {} false"}),
        )
        .await;
    }

    /// Holds the engine for `ms` of wall time from now (see [`Server::gate_rule`]); returns
    /// the instant it lets go. A replay of the gate event after that instant does not wait again.
    pub async fn gate(&self, ms: u64) -> std::time::Instant {
        let until = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis() as u64
            + ms;
        self.send(
            ADMIN_TOKEN,
            "gate",
            "application/json",
            &json!({ "until": until }).to_string(),
        )
        .await;
        std::time::Instant::now() + Duration::from_millis(ms)
    }

    /// Asks the process to stop (SIGTERM) and waits for it to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        self.child.wait().expect("wait")
    }

    /// Takes SQLite's write lock from another connection, as another process would; `COMMIT`
    /// on the returned connection lets go.
    pub async fn lock_database(&self) -> sqlx::SqliteConnection {
        use sqlx::Connection;
        let db = self.data_dir.path().join("tellify.db");
        let mut other = sqlx::SqliteConnection::connect(&format!("sqlite://{}", db.display()))
            .await
            .expect("connect");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut other)
            .await
            .expect("lock");
        other
    }

    /// Posts one JSON event on a task of its own: the answer's status, or the error when the
    /// connection was closed without one.
    pub fn post_in_background(
        &self,
        source: &str,
        body: &str,
    ) -> tokio::task::JoinHandle<reqwest::Result<StatusCode>> {
        let request = self
            .http
            .post(format!("{}/api/v1/events?source={source}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body.to_owned());
        tokio::spawn(async move { request.send().await.map(|r| r.status()) })
    }

    /// Sends SIGTERM and returns at once; see [`Server::exited_within`].
    pub fn signal_term(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success());
    }

    /// The exit status, if the process ends within `limit`.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if start.elapsed() >= limit {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the server again on the same data after it stopped.
    pub fn restart(self) -> Server {
        let (dir, args, now) = (self.data_dir.clone(), self.args.clone(), self.now);
        drop(self);
        Self::spawn(dir, args, now)
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: Option<(&str, String)>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some((content_type, body)) = body {
            req = req.header("content-type", content_type).body(body);
        }
        let resp = req.send().await.expect("the server answers");
        let status = resp.status();
        let text = resp.text().await.expect("a body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, token, path, None).await
    }

    pub async fn post_json(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::POST,
            token,
            path,
            Some(("application/json", body.to_string())),
        )
        .await
    }

    pub async fn put_json(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        self.request(
            reqwest::Method::PUT,
            token,
            path,
            Some(("application/json", body.to_string())),
        )
        .await
    }

    /// Posts events and expects them accepted.
    pub async fn send(&self, token: &str, source: &str, content_type: &str, body: &str) -> Value {
        let (status, answer) = self
            .request(
                reqwest::Method::POST,
                token,
                &format!("/api/v1/events?source={source}"),
                Some((content_type, body.to_owned())),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "events refused: {answer}");
        answer
    }

    /// Saves a rule and expects it accepted.
    pub async fn rule(&self, token: &str, rule: Value) {
        let name = rule["name"].as_str().expect("a rule name").to_owned();
        let (status, answer) = self
            .put_json(token, &format!("/api/v1/rules/{}", encode(&name)), &rule)
            .await;
        assert!(
            status.is_success(),
            "rule {name} refused: {status} {answer}"
        );
    }

    /// Saves every rule document of a YAML file.
    pub async fn rules_from(&self, token: &str, file: &Path) {
        let text = std::fs::read_to_string(file).expect("rule file");
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).expect("YAML");
        for doc in docs {
            self.rule(token, doc).await;
        }
    }

    /// Moves the clock forward and waits until the engine has caught up with everything.
    pub async fn advance(&mut self, by: &str) {
        let (status, answer) = self
            .post_json(ADMIN_TOKEN, "/api/v1/_test/clock", &json!({"advance": by}))
            .await;
        assert_eq!(status, StatusCode::OK, "advance: {answer}");
        self.now = answer["now"].as_i64().expect("now");
    }

    /// Waits until the engine has evaluated everything accepted so far.
    pub async fn settle(&mut self) {
        self.advance("0s").await;
    }

    /// The barrier before a negative check ("nothing more was sent"): the engine has committed
    /// everything accepted so far, and no delivery is due or being sent, so whatever the
    /// server sends at this instant of its clock has been sent and recorded.
    pub async fn quiesce(&mut self) {
        self.settle().await;
        let mut busy = Vec::new();
        for _ in 0..400 {
            let all = self.deliveries(ADMIN_TOKEN, "").await;
            busy = all
                .iter()
                .filter(|d| d["status"] == "sending" || due(d, &all, self.now))
                .cloned()
                .collect();
            if busy.is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("deliveries still due or being sent: {busy:#?}");
    }

    pub async fn alerts(&self, token: &str, query: &str) -> Vec<Value> {
        let (status, answer) = self
            .get(token, &format!("/api/v1/alerts?limit=1000&{query}"))
            .await;
        assert_eq!(status, StatusCode::OK, "alerts: {answer}");
        answer["alerts"].as_array().expect("alerts").clone()
    }

    pub async fn deliveries(&self, token: &str, query: &str) -> Vec<Value> {
        let (status, answer) = self
            .get(token, &format!("/api/v1/deliveries?limit=1000&{query}"))
            .await;
        assert_eq!(status, StatusCode::OK, "deliveries: {answer}");
        answer["deliveries"].as_array().expect("deliveries").clone()
    }

    /// Waits (bounded) until the deliveries matching `query` satisfy `done`; returns them.
    pub async fn deliveries_until(
        &self,
        token: &str,
        query: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let mut last = Vec::new();
        for _ in 0..200 {
            last = self.deliveries(token, query).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("deliveries never got there: {last:#?}");
    }

    /// Creates a user in an IANA time zone, with a token; returns the token.
    pub async fn user_in_zone(&self, name: &str, timezone: &str) -> String {
        let (status, answer) = self
            .post_json(
                ADMIN_TOKEN,
                "/api/v1/users",
                &json!({"name": name, "timezone": timezone}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "user: {answer}");
        let (status, answer) = self
            .post_json(ADMIN_TOKEN, "/api/v1/tokens", &json!({"user": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "token: {answer}");
        answer["token"].as_str().expect("token").to_owned()
    }

    /// Creates a user with a token; returns the token.
    pub async fn user(&self, name: &str) -> String {
        let (status, answer) = self
            .post_json(ADMIN_TOKEN, "/api/v1/users", &json!({"name": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "user: {answer}");
        let (status, answer) = self
            .post_json(ADMIN_TOKEN, "/api/v1/tokens", &json!({"user": name}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "token: {answer}");
        answer["token"].as_str().expect("token").to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A failing test shows what the server said.
        if std::thread::panicking() {
            eprintln!(
                "--- server log ---\n{}",
                self.log.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the delivery worker would send `d` now: it is pending (or held for a digest) and
/// its time has come, and it does not wait for an earlier one to the same alert and channel
/// (deliveries of one digest do not wait for each other).
fn due(d: &Value, all: &[Value], now: i64) -> bool {
    let waiting = ["pending", "held", "sending"];
    (d["status"] == "pending" || d["status"] == "held")
        && d["next_attempt_at"].as_i64().expect("next_attempt_at") <= now
        && !all.iter().any(|e| {
            e["alert_id"] == d["alert_id"]
                && e["channel_owner"] == d["channel_owner"]
                && e["channel"] == d["channel"]
                && e["id"].as_str() < d["id"].as_str()
                && waiting.iter().any(|s| e["status"] == *s)
                && (e["digest"].is_null() || d["digest"].is_null() || e["digest"] != d["digest"])
        })
}

/// The flags a server needs for [`Server::gate_rule`]: a script may run as long as the gate
/// holds, and a lone owner is never throttled.
pub const GATE_ARGS: [&str; 4] = ["--js-cpu-ms", "60000", "--js-owner-cpu-ms", "0"];

/// Where the engine is in the event log; see [`Server::engine_position`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub checkpoint: i64,
    pub head: i64,
}

pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The alerts of one rule.
pub fn of_rule<'a>(alerts: &'a [Value], rule: &str) -> Vec<&'a Value> {
    alerts.iter().filter(|a| a["rule"] == rule).collect()
}
