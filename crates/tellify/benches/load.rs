//! Load benchmark: the real `tellify` binary under HTTP load on loopback.
//!
//! ```sh
//! cargo bench --bench load                      # every scenario
//! cargo bench --bench load -- batch rss         # some: rules-http batch unindexed single rss notify
//! ```
//!
//! Each scenario starts its own server (`tellify serve --listen 127.0.0.1:0`) on a fresh data
//! directory, loads rules, sends events and waits until `tellify_events_evaluated_total` (from
//! `GET /metrics`) reaches the number of events sent. Every loop is bounded in count and time.
//! The server's CPU time is read per thread from `/proc/PID/task/*/schedstat`, so the table
//! also shows where the server spent it (engine thread, tokio workers, SQLite workers).
//! See BENCHMARKS.md for results.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "tfy_bench_admin_token_0123456789";
/// Events per run of the batched scenario.
const BATCH_EVENTS: usize = 200_000;
const BATCH_SIZE: usize = 1_000;
const BATCH_CLIENTS: usize = 4;
/// Events for the run with rules the index cannot narrow (every event runs all of them).
const UNINDEXED_EVENTS: usize = 50_000;
const UNINDEXED_RULES: usize = 100;
/// Single-event POSTs: connections, and the bounds in count and time.
const SINGLE_CONNECTIONS: usize = 64;
const SINGLE_MAX_EVENTS: usize = 150_000;
const SINGLE_MAX_TIME: Duration = Duration::from_secs(10);
/// The memory scenario: rules, and alerts each rule opens.
const RSS_RULES: usize = 10_000;
const RSS_ALERTS_PER_RULE: usize = 10;
/// Longest wait for the engine to catch up, per scenario.
const EVAL_DEADLINE: Duration = Duration::from_secs(300);
/// How often `/metrics` is polled while waiting for the engine. Each poll costs the server a
/// `GROUP BY` over open alerts and rendering every series, so not too often.
const POLL: Duration = Duration::from_millis(50);
/// Rules saved over HTTP in the rule-loading measurement.
const HTTP_RULES: usize = 10_000;

// ---------------------------------------------------------------------------------------------
// The server process

struct Server {
    child: Child,
    base: String,
    pid: u32,
    http: reqwest::Client,
    log: Arc<Mutex<String>>,
    dir: Arc<tempfile::TempDir>,
}

impl Server {
    /// Starts `tellify serve`, with `rules` (YAML streams, one per file) in a folder for
    /// `--rules` if given; returns once it listens, with the time that took.
    fn start(rules: Option<&[String]>) -> (Server, Duration) {
        let dir = Arc::new(tempfile::tempdir().expect("a temp dir"));
        if let Some(files) = rules {
            let folder: PathBuf = dir.path().join("rules");
            std::fs::create_dir(&folder).expect("the rule folder is made");
            for (i, yaml) in files.iter().enumerate() {
                std::fs::write(folder.join(format!("rules-{i:03}.yaml")), yaml)
                    .expect("a rule file is written");
            }
        }
        Self::spawn(dir, &[])
    }

    /// Starts `tellify serve` with extra flags and no rules.
    fn start_with(flags: &[&str]) -> (Server, Duration) {
        let dir = Arc::new(tempfile::tempdir().expect("a temp dir"));
        Self::spawn(dir, flags)
    }

    /// Stops the server and starts it again on the same data (it restores its state).
    fn restart(mut self) -> (Server, Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let dir = self.dir.clone();
        drop(self);
        Self::spawn(dir, &[])
    }

    fn spawn(dir: Arc<tempfile::TempDir>, flags: &[&str]) -> (Server, Duration) {
        // TELLIFY_BENCH_WRAP runs the server under a tool, e.g. `heaptrack -o /tmp/ht` (with
        // `--no-default-features`, so heaptrack sees the allocations). Memory figures are then
        // the tool's, not the server's.
        let wrap = std::env::var("TELLIFY_BENCH_WRAP").unwrap_or_default();
        let mut words = wrap.split_whitespace();
        let mut cmd = match words.next() {
            Some(tool) => {
                let mut c = Command::new(tool);
                c.args(words).arg(env!("CARGO_BIN_EXE_tellify"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_tellify")),
        };
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path());
        let folder = dir.path().join("rules");
        if folder.is_dir() {
            cmd.arg("--rules").arg(&folder);
        }
        cmd.args(flags);
        let started = Instant::now();
        let mut child = cmd
            .env("TELLIFY_ADMIN_TOKEN", TOKEN)
            .env("TELLIFY_ADMIN_PASSWORD", "bench-password")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the tellify binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = log.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        // Drain stderr for the server's whole life, or it blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("Tellify listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut log = sink.lock().expect("log lock");
                // Long lines (sqlx quotes whole statements) are cut.
                if log.len() < 1 << 20 {
                    log.extend(line.chars().take(300));
                    log.push('\n');
                }
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(600)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the server did not start:\n{}", log.lock().expect("log"));
            }
        };
        let startup = started.elapsed();
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .timeout(Duration::from_secs(120))
            .build()
            .expect("an HTTP client");
        let pid = child.id();
        (
            Server {
                child,
                base,
                pid,
                http,
                log,
                dir,
            },
            startup,
        )
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            // `/metrics` needs a token: the admin's.
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("GET /metrics answers")
            .text()
            .await
            .expect("a metrics body")
    }

    /// The sum of every sample of `name` (all label sets).
    async fn metric(&self, name: &str) -> f64 {
        sum_metric(&self.metrics().await, name)
    }

    /// Polls `tellify_events_evaluated_total` until it reaches `target`; returns when it did,
    /// or `None` after `deadline`.
    async fn wait_evaluated(&self, target: usize, deadline: Duration) -> Option<Instant> {
        let until = Instant::now() + deadline;
        loop {
            let n = self.metric("tellify_events_evaluated_total").await;
            if n >= target as f64 {
                return Some(Instant::now());
            }
            if Instant::now() > until {
                eprintln!("  ! the engine evaluated {n} of {target} events before the deadline");
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn put_rule(&self, rule: &serde_json::Value) {
        let name = rule["name"].as_str().expect("a name");
        let resp = self
            .http
            .put(format!("{}/api/v1/rules/{name}", self.base))
            .bearer_auth(TOKEN)
            .json(rule)
            .send()
            .await
            .expect("PUT rule answers");
        let status = resp.status();
        assert!(
            status.is_success(),
            "rule {name}: {status} {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// `VmRSS` and `VmHWM` of the server, in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// CPU time on CPU so far of each live thread: tid → (name, ns).
    fn thread_cpu(&self) -> BTreeMap<u32, (String, u64)> {
        let mut out = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return out;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let ns = std::fs::read_to_string(task.path().join("schedstat"))
                .ok()
                .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
                .unwrap_or(0);
            out.insert(tid, (comm.trim().to_owned(), ns));
        }
        out
    }

    fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.dir;
    }
}

fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .fold(0.0, |a, b| a + b)
}

/// Server CPU spent between two snapshots, by thread kind.
struct CpuUse {
    by_kind: BTreeMap<String, f64>,
}

impl CpuUse {
    fn between(
        before: &BTreeMap<u32, (String, u64)>,
        after: &BTreeMap<u32, (String, u64)>,
    ) -> Self {
        let mut by_kind: BTreeMap<String, f64> = BTreeMap::new();
        for (tid, (name, ns)) in after {
            let base = before.get(tid).map_or(0, |(_, b)| *b);
            let kind = match name.as_str() {
                n if n.starts_with("tokio-runtime") => "tokio".to_owned(),
                n if n.starts_with("sqlx-sqlite") => "sqlite".to_owned(),
                n if n.starts_with("tellify-engine") => "engine".to_owned(),
                n => n.to_owned(),
            };
            *by_kind.entry(kind).or_default() += ns.saturating_sub(base) as f64 / 1e9;
        }
        by_kind.retain(|_, s| *s >= 0.005);
        CpuUse { by_kind }
    }

    fn total(&self) -> f64 {
        self.by_kind.values().sum()
    }

    /// `total 3.2 s = 16.0 µs/event (engine 1.1, tokio 1.5, sqlite 0.6)`.
    fn describe(&self, events: usize) -> String {
        let parts: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, s)| format!("{k} {s:.2}"))
            .collect();
        format!(
            "server CPU {:.2} s = {:.1} µs/event ({})",
            self.total(),
            self.total() * 1e6 / events.max(1) as f64,
            parts.join(", ")
        )
    }
}

/// CPU seconds this (client) process has used, from `/proc/self/stat` (clock ticks of 10 ms).
fn own_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the command name: state is field 0, utime 11, stime 12.
    (tick(11) + tick(12)) / 100.0
}

// ---------------------------------------------------------------------------------------------
// Rules and events

/// Rule `i`: filed by the index under `host == 'h<i>'`, so each event meets exactly one rule
/// whatever the number of rules.
fn cpu_rule(i: usize) -> serde_json::Value {
    serde_json::json!({
        "name": format!("cpu-{i}"),
        "source": "metrics",
        "kind": "match",
        "when": format!("event.host == 'h{i}' && event.cpu > 90"),
        "group_by": ["host"],
    })
}

/// A rule the index cannot narrow: it runs for every event of `metrics`, and never matches.
fn unindexed_rule(i: usize) -> serde_json::Value {
    serde_json::json!({
        "name": format!("any-{i}"),
        "source": "metrics",
        "kind": "match",
        "when": "event.cpu > 999",
        "group_by": ["host"],
    })
}

/// One alert per event id: used to open many distinct alerts.
fn per_id_rule(i: usize) -> serde_json::Value {
    serde_json::json!({
        "name": format!("open-{i}"),
        "source": "metrics",
        "kind": "match",
        "when": format!("event.host == 'h{i}' && event.cpu > 90"),
        "group_by": ["id"],
    })
}

/// Rule documents as YAML streams (JSON is YAML) for `--rules`, 1,000 per file (the YAML
/// parser's budget, since raised in the server, once refused more than 1,024 in one file).
fn yaml_files(rules: &[serde_json::Value]) -> Vec<String> {
    rules
        .chunks(1_000)
        .map(|chunk| {
            chunk
                .iter()
                .map(serde_json::Value::to_string)
                .collect::<Vec<_>>()
                .join("\n---\n")
        })
        .collect()
}

/// A small deterministic generator (xorshift), so every run sends the same events.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A number in [lo, hi) with one decimal.
    fn num(&mut self, lo: u64, hi: u64) -> f64 {
        (lo * 10 + self.below((hi - lo) * 10)) as f64 / 10.0
    }
}

const REGIONS: [&str; 6] = [
    "eu-west-1",
    "eu-central-1",
    "us-east-1",
    "us-west-2",
    "ap-south-1",
    "ap-northeast-1",
];
const SERVICES: [&str; 8] = [
    "checkout-api",
    "search-indexer",
    "payments",
    "inventory-sync",
    "auth-gateway",
    "media-transcoder",
    "recommendations",
    "notifications",
];

/// Event `k` of host `h<host>`: 198–225 bytes of JSON (≈212 on average); `hot_pct` percent have cpu > 90.
fn event(rng: &mut Rng, k: usize, host: usize, hot_pct: u64) -> String {
    let cpu = if rng.below(100) < hot_pct {
        rng.num(91, 100)
    } else {
        rng.num(1, 90)
    };
    let service = SERVICES[rng.below(SERVICES.len() as u64) as usize];
    format!(
        concat!(
            r#"{{"host":"h{host}","cpu":{cpu:.1},"mem":{mem:.1},"disk":{disk:.1},"load1":{load:.2},"#,
            r#""region":"{region}","service":"{service}","env":"production","kernel":"6.1.0-18-amd64","#,
            r#""pod":"{service}-7f9c6d5b8-{pod:05x}","id":"ev-{k:09}"}}"#
        ),
        host = host,
        cpu = cpu,
        mem = rng.num(10, 95),
        disk = rng.num(5, 99),
        load = rng.num(0, 16),
        region = REGIONS[rng.below(REGIONS.len() as u64) as usize],
        service = service,
        pod = rng.below(0x10_0000),
        k = k,
    )
}

/// `n` events over `hosts` hosts (event k goes to host k mod hosts).
fn events(n: usize, hosts: usize, hot_pct: u64, seed: u64) -> Vec<String> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|k| event(&mut rng, k, k % hosts, hot_pct))
        .collect()
}

fn ndjson_batches(events: &[String], size: usize) -> Vec<String> {
    events.chunks(size).map(|c| c.join("\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// Load

struct Sent {
    events: usize,
    started: Instant,
    accepted: Instant,
    latencies: Vec<Duration>,
}

/// Sends NDJSON bodies from `clients` concurrent clients, each its share in order.
async fn send_batches(srv: &Server, bodies: Vec<String>, clients: usize) -> Sent {
    let mut shares: Vec<Vec<String>> = vec![Vec::new(); clients];
    for (i, b) in bodies.into_iter().enumerate() {
        shares[i % clients].push(b);
    }
    let url = format!("{}/api/v1/events?source=metrics", srv.base);
    let started = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let http = srv.http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut n = 0;
                let mut latencies = Vec::with_capacity(share.len());
                for body in share {
                    let t = Instant::now();
                    let resp = http
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await
                        .expect("POST events answers");
                    let status = resp.status();
                    let answer: serde_json::Value = resp.json().await.expect("a JSON answer");
                    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}");
                    n += answer["accepted"].as_u64().expect("accepted") as usize;
                    latencies.push(t.elapsed());
                }
                (n, latencies)
            })
        })
        .collect();
    let mut events = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await.expect("a client task");
        events += n;
        latencies.extend(l);
    }
    Sent {
        events,
        started,
        accepted: Instant::now(),
        latencies,
    }
}

/// One JSON event per request from `connections` concurrent requests on one pooled client,
/// until `max` events or `max_time`.
async fn send_single(
    srv: &Server,
    events: Arc<Vec<String>>,
    connections: usize,
    max_time: Duration,
) -> Sent {
    let url = format!("{}/api/v1/events?source=metrics", srv.base);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop = started + max_time;
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let http = srv.http.clone();
            let url = url.clone();
            let next = next.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let mut n = 0;
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= events.len() || Instant::now() >= stop {
                        break;
                    }
                    let t = Instant::now();
                    let resp = http
                        .post(&url)
                        .bearer_auth(TOKEN)
                        .header("content-type", "application/json")
                        .body(events[i].clone())
                        .send()
                        .await
                        .expect("POST event answers");
                    let status = resp.status();
                    let body = resp.bytes().await.expect("a body");
                    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{body:?}");
                    n += 1;
                    latencies.push(t.elapsed());
                }
                (n, latencies)
            })
        })
        .collect();
    let mut sent = 0;
    let mut latencies = Vec::new();
    for t in tasks {
        let (n, l) = t.await.expect("a client task");
        sent += n;
        latencies.extend(l);
    }
    Sent {
        events: sent,
        started,
        accepted: Instant::now(),
        latencies,
    }
}

fn percentile(latencies: &mut [Duration], p: f64) -> Duration {
    if latencies.is_empty() {
        return Duration::ZERO;
    }
    latencies.sort_unstable();
    let i = ((latencies.len() - 1) as f64 * p).round() as usize;
    latencies[i]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

// ---------------------------------------------------------------------------------------------
// Scenarios

struct Row {
    scenario: String,
    rules: usize,
    events: usize,
    accepted: Option<f64>,
    evaluated: Option<f64>,
    note: String,
}

struct Report {
    rows: Vec<Row>,
}

impl Report {
    fn print(&self) {
        println!();
        println!(
            "| scenario | rules | events | accepted ev/s | evaluated ev/s | notes |\n|---|---:|---:|---:|---:|---|"
        );
        let fmt = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.0}"));
        for r in &self.rows {
            println!(
                "| {} | {} | {} | {} | {} | {} |",
                r.scenario,
                r.rules,
                r.events,
                fmt(r.accepted),
                fmt(r.evaluated),
                r.note
            );
        }
    }
}

/// Sends `events` as NDJSON batches and waits for the engine; adds a row.
async fn batched_run(
    report: &mut Report,
    label: &str,
    srv: &Server,
    rules: usize,
    events: Vec<String>,
    evals_per_event: f64,
) -> Option<f64> {
    let n = events.len();
    let bytes: usize = events.iter().map(String::len).sum();
    let bodies = ndjson_batches(&events, BATCH_SIZE);
    drop(events);
    let evals_before = srv.metric("tellify_rule_evaluations_total").await;
    let cpu_before = srv.thread_cpu();
    let client_before = own_cpu();
    let mut sent = send_batches(srv, bodies, BATCH_CLIENTS).await;
    assert_eq!(sent.events, n, "every event was accepted");
    let done = srv.wait_evaluated(n, EVAL_DEADLINE).await;
    let cpu = CpuUse::between(&cpu_before, &srv.thread_cpu());
    let client = own_cpu() - client_before;
    let accept_s = (sent.accepted - sent.started).as_secs_f64();
    let eval_s = done.map(|d| (d - sent.started).as_secs_f64());
    let evals = srv.metric("tellify_rule_evaluations_total").await - evals_before;
    let open = srv.metric("tellify_alerts_open").await;
    let (rss, _) = srv.memory_kib();
    // Each event must have met the rules the scenario says, or it measured something else.
    assert!(
        done.is_none() || (evals / n as f64 - evals_per_event).abs() < 0.01 * evals_per_event,
        "{label}: {evals} rule evaluations for {n} events, expected {evals_per_event} each"
    );
    let p50 = percentile(&mut sent.latencies, 0.5);
    let p99 = percentile(&mut sent.latencies, 0.99);
    println!(
        "  {label}: {n} events ({} B avg) accepted in {accept_s:.2} s, evaluated in {} s; \
         batch latency p50 {} p99 {}; JS evaluations {evals:.0} ({:.1}/event); open alerts {open:.0}; RSS {} MiB",
        bytes / n.max(1),
        eval_s.map_or("—".to_owned(), |s| format!("{s:.2}")),
        ms(p50),
        ms(p99),
        evals / n as f64,
        rss / 1024,
    );
    println!("    {}; client CPU {client:.2} s", cpu.describe(n));
    let evaluated = eval_s.map(|s| n as f64 / s);
    report.rows.push(Row {
        scenario: label.to_owned(),
        rules,
        events: n,
        accepted: Some(n as f64 / accept_s),
        evaluated,
        note: format!(
            "batch p50 {} p99 {}; {:.1} µs server CPU/event; {open:.0} alerts open; RSS {} MiB",
            ms(p50),
            ms(p99),
            cpu.total() * 1e6 / n as f64,
            rss / 1024
        ),
    });
    evaluated
}

/// Rules over HTTP, one request each, from 4 concurrent clients: is it fast enough for 10,000?
async fn rules_http(report: &mut Report) {
    println!("rules-http: PUT {HTTP_RULES} rules, 4 concurrent clients");
    let (srv, _) = Server::start(None);
    let srv = Arc::new(srv);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let srv = srv.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= HTTP_RULES {
                        break;
                    }
                    srv.put_rule(&cpu_rule(i)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a rule task");
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = HTTP_RULES as f64 / secs;
    println!(
        "  {HTTP_RULES} rules in {secs:.2} s = {rate:.0} rules/s (10,000 would take ~{:.0} s)",
        10_000.0 / rate
    );
    report.rows.push(Row {
        scenario: "rules over HTTP (PUT, 4 clients)".into(),
        rules: HTTP_RULES,
        events: 0,
        accepted: None,
        evaluated: None,
        note: format!("{rate:.0} rules/s"),
    });
}

/// Starts a server with `rules` loaded from a file; prints how long the start took.
fn start_with_rules(rules: &[serde_json::Value]) -> Server {
    let (srv, startup) = Server::start(Some(&yaml_files(rules)));
    // Any warning here is a rule that did not load: the run would measure something else.
    let log = srv.log();
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "the rules did not all load:\n{log}"
    );
    let (rss, _) = srv.memory_kib();
    println!(
        "  started with {} rules from --rules in {:.2} s; RSS {} MiB; server pid {}",
        rules.len(),
        startup.as_secs_f64(),
        rss / 1024,
        srv.pid
    );
    srv
}

async fn batch(report: &mut Report) {
    println!(
        "batch: NDJSON batches of {BATCH_SIZE}, {BATCH_CLIENTS} clients, {BATCH_EVENTS} events, 3% of events cpu > 90"
    );
    let mut at = BTreeMap::new();
    for rules in [10usize, 1_000, 10_000] {
        let defs: Vec<_> = (0..rules).map(cpu_rule).collect();
        let srv = start_with_rules(&defs);
        let evs = events(BATCH_EVENTS, rules, 3, 0x5eed_0001);
        let eps = batched_run(
            report,
            &format!("batch, {rules} indexed rules"),
            &srv,
            rules,
            evs,
            1.0,
        )
        .await;
        at.insert(rules, eps);
    }
    if let (Some(Some(a)), Some(Some(b))) = (at.get(&10), at.get(&10_000)) {
        println!(
            "  evaluated throughput at 10,000 rules is {:.0}% of that at 10",
            b / a * 100.0
        );
    }
}

async fn unindexed(report: &mut Report) {
    println!(
        "unindexed: {UNINDEXED_RULES} rules `event.cpu > 999` on source metrics (every event runs all)"
    );
    let defs: Vec<_> = (0..UNINDEXED_RULES).map(unindexed_rule).collect();
    let srv = start_with_rules(&defs);
    let evs = events(UNINDEXED_EVENTS, 1_000, 3, 0x5eed_0002);
    batched_run(
        report,
        &format!("batch, {UNINDEXED_RULES} unindexed rules"),
        &srv,
        UNINDEXED_RULES,
        evs,
        UNINDEXED_RULES as f64,
    )
    .await;
}

async fn single(report: &mut Report) {
    let rules = 1_000;
    // `TELLIFY_BENCH_CONNECTIONS=N` changes the number of concurrent requests.
    let connections = std::env::var("TELLIFY_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(SINGLE_CONNECTIONS)
        .clamp(1, 1_024);
    println!(
        "single: one JSON event per POST, {connections} concurrent keep-alive connections, \
         {rules} rules, up to {SINGLE_MAX_EVENTS} events or {} s",
        SINGLE_MAX_TIME.as_secs()
    );
    let defs: Vec<_> = (0..rules).map(cpu_rule).collect();
    let srv = start_with_rules(&defs);
    let evs = Arc::new(events(SINGLE_MAX_EVENTS, rules, 3, 0x5eed_0003));
    let cpu_before = srv.thread_cpu();
    let client_before = own_cpu();
    let mut sent = send_single(&srv, evs, connections, SINGLE_MAX_TIME).await;
    let n = sent.events;
    let done = srv.wait_evaluated(n, EVAL_DEADLINE).await;
    let cpu = CpuUse::between(&cpu_before, &srv.thread_cpu());
    let client = own_cpu() - client_before;
    let accept_s = (sent.accepted - sent.started).as_secs_f64();
    let eval_s = done.map(|d| (d - sent.started).as_secs_f64());
    let p50 = percentile(&mut sent.latencies, 0.5);
    let p99 = percentile(&mut sent.latencies, 0.99);
    println!(
        "  {n} requests in {accept_s:.2} s, evaluated at {} s; latency p50 {} p99 {}",
        eval_s.map_or("—".to_owned(), |s| format!("{s:.2}")),
        ms(p50),
        ms(p99)
    );
    println!("    {}; client CPU {client:.2} s", cpu.describe(n));
    report.rows.push(Row {
        scenario: format!("single-event POSTs, {connections} connections"),
        rules,
        events: n,
        accepted: Some(n as f64 / accept_s),
        evaluated: eval_s.map(|s| n as f64 / s),
        note: format!(
            "latency p50 {} p99 {}; {:.1} µs server CPU/event; client CPU {:.0}% of a core",
            ms(p50),
            ms(p99),
            cpu.total() * 1e6 / n.max(1) as f64,
            client / accept_s * 100.0
        ),
    });
}

async fn rss(report: &mut Report) {
    let alerts = RSS_RULES * RSS_ALERTS_PER_RULE;
    println!("rss: {RSS_RULES} rules, then {alerts} events opening {alerts} distinct alerts");
    let defs: Vec<_> = (0..RSS_RULES).map(per_id_rule).collect();
    let srv = start_with_rules(&defs);
    let (rules_rss, _) = srv.memory_kib();
    // Every event is hot and has its own id: each opens an alert of its host's rule.
    let evs = events(alerts, RSS_RULES, 100, 0x5eed_0004);
    batched_run(
        report,
        &format!("open {alerts} alerts"),
        &srv,
        RSS_RULES,
        evs,
        1.0,
    )
    .await;
    let open = srv.metric("tellify_alerts_open").await;
    let (rss, hwm) = srv.memory_kib();
    let t = Instant::now();
    let resp = srv
        .http
        .get(format!("{}/api/v1/alerts?status=firing&limit=1", srv.base))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("GET alerts answers");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("JSON alerts");
    let list_ms = t.elapsed();
    let listed = body["alerts"].as_array().map_or(0, Vec::len);
    println!(
        "  open alerts {open:.0}; VmRSS {:.1} MiB (with rules only: {:.1} MiB), VmHWM {:.1} MiB; \
         GET /alerts?status=firing&limit=1: {status}, {listed} alert, {}",
        rss as f64 / 1024.0,
        rules_rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        ms(list_ms)
    );
    assert!(status.is_success() && listed == 1, "alerts list: {body}");
    report.rows.push(Row {
        scenario: format!("RSS, {alerts} open alerts"),
        rules: RSS_RULES,
        events: alerts,
        accepted: None,
        evaluated: None,
        note: format!(
            "VmRSS {:.1} MiB (rules only {:.1}), peak {:.1} MiB; {open:.0} open; list limit=1 in {}",
            rss as f64 / 1024.0,
            rules_rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            ms(list_ms)
        ),
    });
    if srv.log().lines().count() > 1 {
        println!("  server log:\n{}", srv.log());
    }
    pause(&srv);
    // The same data after a restart: rules and open alerts restored, nothing in flight.
    let (srv, restore) = srv.restart();
    let open = srv.metric("tellify_alerts_open").await;
    let (rss, hwm) = srv.memory_kib();
    println!(
        "  after a restart (restored in {:.2} s): open alerts {open:.0}; VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        restore.as_secs_f64(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    pause(&srv);
    report.rows.push(Row {
        scenario: format!("RSS, {alerts} open alerts, after restart"),
        rules: RSS_RULES,
        events: 0,
        accepted: None,
        evaluated: None,
        note: format!(
            "VmRSS {:.1} MiB, peak {:.1} MiB; {open:.0} open; restored in {:.1} s",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            restore.as_secs_f64()
        ),
    });
}

/// With `TELLIFY_BENCH_PAUSE=SECONDS` (at most 600), keeps the server up that long for a look
/// from outside (`/proc/PID/smaps`, `perf`).
fn pause(srv: &Server) {
    if let Some(secs) = std::env::var("TELLIFY_BENCH_PAUSE")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        println!("  pausing {secs} s; server pid {}, {}", srv.pid, srv.base);
        std::thread::sleep(Duration::from_secs(secs.min(600)));
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications: event sent → webhook received

/// A webhook receiver in this process: notes when each alert's notification arrives.
async fn receiver() -> (String, Arc<Mutex<Vec<(String, Instant)>>>) {
    let arrivals: Arc<Mutex<Vec<(String, Instant)>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = arrivals.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let sink = sink.clone();
        async move {
            let at = Instant::now();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let key = v["alert"]["key"].as_str().unwrap_or_default().to_owned();
            sink.lock().expect("lock").push((key, at));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, arrivals)
}

async fn wait_arrivals(
    arrivals: &Mutex<Vec<(String, Instant)>>,
    n: usize,
    deadline: Duration,
) -> bool {
    let until = Instant::now() + deadline;
    while arrivals.lock().expect("lock").len() < n {
        if Instant::now() > until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// Events paced at 1,000/s, each opening an alert whose rule notifies a local webhook: the time
/// from sending the event to the webhook receiving its notification; then as many as the
/// server takes, for the deliveries per second it sustains.
async fn notify(report: &mut Report) {
    const RATE: usize = 1_000;
    const SECONDS: usize = 10;
    const BURST: usize = 20_000;
    let (srv, _) = Server::start(None);
    let (url, arrivals) = receiver().await;
    let resp = srv
        .http
        .put(format!("{}/api/v1/channels/hook", srv.base))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"kind": "webhook", "url": url}))
        .send()
        .await
        .expect("PUT channel answers");
    assert!(resp.status().is_success(), "channel: {}", resp.status());
    srv.put_rule(&serde_json::json!({"name": "each", "source": "metrics", "when": "true", "group_by": ["id"], "notify": ["hook"]}))
        .await;

    let n = RATE * SECONDS;
    let bodies = events(n, 1_000, 3, 7);
    let mut sent: BTreeMap<String, Instant> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE as u64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    for (k, body) in bodies.into_iter().enumerate() {
        tick.tick().await;
        sent.insert(format!("ev-{k:09}"), Instant::now());
        let http = srv.http.clone();
        let post = format!("{}/api/v1/events?source=metrics", srv.base);
        tokio::spawn(async move {
            let r = http
                .post(post)
                .bearer_auth(TOKEN)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("POST answers");
            assert_eq!(r.status().as_u16(), 202);
        });
    }
    let paced = started.elapsed();
    let arrived = wait_arrivals(&arrivals, n, Duration::from_secs(120)).await;
    let mut lat: Vec<f64> = arrivals
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|(key, at)| {
            sent.get(key)
                .map(|s| at.duration_since(*s).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "  notify: {n} events at {:.0}/s; {} notifications; event → webhook p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        n as f64 / paced.as_secs_f64(),
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    report.rows.push(Row {
        scenario: "notify: event → webhook, 1,000 ev/s".into(),
        rules: 1,
        events: n,
        accepted: Some(n as f64 / paced.as_secs_f64()),
        evaluated: None,
        note: format!(
            "{}p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            if arrived { "" } else { "NOT ALL ARRIVED; " },
            pct(0.5),
            pct(0.99),
            lat.last().copied().unwrap_or(f64::NAN)
        ),
    });

    // Sustained: a burst of alerts in NDJSON batches; deliveries/s until the last arrives.
    let before = arrivals.lock().expect("lock").len();
    let burst = events(BURST, 1_000, 3, 8)
        .into_iter()
        .enumerate()
        .map(|(k, e)| e.replace("\"id\":\"ev-", &format!("\"id\":\"burst-{k}-")))
        .collect::<Vec<_>>();
    let started = Instant::now();
    let sent = send_batches(&srv, ndjson_batches(&burst, 500), 4).await;
    let done = wait_arrivals(&arrivals, before + BURST, Duration::from_secs(300)).await;
    let took = started.elapsed();
    println!(
        "  notify burst: {BURST} alerts accepted in {:.2} s; delivered in {:.2} s = {:.0} deliveries/s",
        sent.accepted.duration_since(sent.started).as_secs_f64(),
        took.as_secs_f64(),
        BURST as f64 / took.as_secs_f64()
    );
    report.rows.push(Row {
        scenario: "notify: deliveries sustained".into(),
        rules: 1,
        events: BURST,
        accepted: Some(BURST as f64 / sent.accepted.duration_since(sent.started).as_secs_f64()),
        evaluated: None,
        note: format!(
            "{}{:.0} deliveries/s to a local webhook",
            if done { "" } else { "NOT ALL ARRIVED; " },
            BURST as f64 / took.as_secs_f64()
        ),
    });
}

// ---------------------------------------------------------------------------------------------
// Fairness: another user's alert while one owner runs at full budget

/// POSTs one event as `token`; panics unless it is accepted.
async fn post_event(
    http: reqwest::Client,
    base: String,
    token: String,
    source: &str,
    body: String,
) {
    let r = http
        .post(format!("{base}/api/v1/events?source={source}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST answers");
    assert_eq!(r.status().as_u16(), 202, "event refused");
}

/// One owner (`hog`) has 20 rules that each spin 5 ms per event (100 ms of engine time per
/// event) and sends 20 events a second: 2 s of work per second, far over any share. The admin,
/// another owner, has a rule that notifies a local webhook for every event and sends 20 events a
/// second. Measured: the admin's event sent → webhook received, with the server's default share
/// per owner (`--js-owner-cpu-ms`, 250), then without a share (0) for comparison.
async fn fairness(report: &mut Report) {
    const SECONDS: u64 = 15;
    const RATE: u64 = 20;
    const HOG_RULES: usize = 20;
    for (label, share, seconds) in [
        ("default share (250 ms/s)", "250", SECONDS),
        ("no share (before)", "0", 5),
    ] {
        let (srv, _) = Server::start_with(&["--js-owner-cpu-ms", share]);
        let admin = |path: &str| format!("{}{path}", srv.base);
        let r = srv
            .http
            .post(admin("/api/v1/users"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"name": "hog"}))
            .send()
            .await
            .expect("user");
        assert!(r.status().is_success(), "user: {}", r.status());
        let r: serde_json::Value = srv
            .http
            .post(admin("/api/v1/tokens"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"user": "hog"}))
            .send()
            .await
            .expect("token")
            .json()
            .await
            .expect("token body");
        let hog = r["token"].as_str().expect("a token").to_owned();
        for k in 0..HOG_RULES {
            let rule = serde_json::json!({"name": format!("spin-{k}"), "source": "hogs",
                "when": "var end = Date.now() + 5; while (Date.now() < end) {} false"});
            let r = srv
                .http
                .put(admin(&format!("/api/v1/rules/spin-{k}")))
                .bearer_auth(&hog)
                .json(&rule)
                .send()
                .await
                .expect("rule");
            assert!(r.status().is_success(), "rule: {}", r.status());
        }
        let (url, arrivals) = receiver().await;
        let r = srv
            .http
            .put(admin("/api/v1/channels/hook"))
            .bearer_auth(TOKEN)
            .json(&serde_json::json!({"kind": "webhook", "url": url}))
            .send()
            .await
            .expect("PUT channel answers");
        assert!(r.status().is_success(), "channel: {}", r.status());
        srv.put_rule(&serde_json::json!({"name": "mine", "source": "mine", "when": "true", "group_by": ["id"], "notify": ["hook"]}))
            .await;
        let cpu_before = srv.thread_cpu();
        let mut sent: BTreeMap<String, Instant> = BTreeMap::new();
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
        let n = (RATE * seconds) as usize;
        let mut throttled_seen = false;
        for k in 0..n {
            tick.tick().await;
            let (http, base) = (srv.http.clone(), srv.base.clone());
            tokio::spawn(post_event(
                http.clone(),
                base.clone(),
                hog.clone(),
                "hogs",
                serde_json::json!({"k": k}).to_string(),
            ));
            let id = format!("ev-{k:06}");
            sent.insert(id.clone(), Instant::now());
            tokio::spawn(post_event(
                http,
                base,
                TOKEN.to_owned(),
                "mine",
                serde_json::json!({"id": id}).to_string(),
            ));
            if k % RATE as usize == 0 && !throttled_seen {
                let v: serde_json::Value = srv
                    .http
                    .get(admin("/api/v1/rules/spin-0"))
                    .bearer_auth(&hog)
                    .send()
                    .await
                    .expect("rule")
                    .json()
                    .await
                    .expect("rule body");
                throttled_seen = v["status"] == "throttled";
            }
        }
        let arrived = wait_arrivals(&arrivals, n, Duration::from_secs(120)).await;
        let cpu = CpuUse::between(&cpu_before, &srv.thread_cpu());
        let mut lat: Vec<f64> = arrivals
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|(key, at)| {
                sent.get(key)
                    .map(|s| at.duration_since(*s).as_secs_f64() * 1000.0)
            })
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| {
            lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
                .copied()
                .unwrap_or(f64::NAN)
        };
        let evaluations = srv.metric("tellify_rule_evaluations_total").await;
        let note = format!(
            "{}other user's event → webhook p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; hog rule runs by then {:.0} ({:.1} s of spinning; events sent for {} s); hog shown throttled: {throttled_seen}; engine thread CPU {:.1} s",
            if arrived { "" } else { "NOT ALL ARRIVED; " },
            pct(0.5),
            pct(0.99),
            lat.last().copied().unwrap_or(f64::NAN),
            evaluations - lat.len() as f64,
            (evaluations - lat.len() as f64) * 0.005,
            seconds,
            cpu.by_kind.get("engine").copied().unwrap_or(0.0),
        );
        println!("  fairness, {label}: {note}");
        report.rows.push(Row {
            scenario: format!("fairness: {label}"),
            rules: HOG_RULES + 1,
            events: 2 * n,
            accepted: None,
            evaluated: None,
            note,
        });
    }
}

const SCENARIOS: [&str; 7] = [
    "rules-http",
    "batch",
    "unindexed",
    "single",
    "rss",
    "notify",
    "fairness",
];

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) nothing is loaded.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("load: run with `cargo bench --bench load` (skipped)");
        return;
    }
    // Any other argument names a scenario.
    let mut chosen: Vec<String> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
    if chosen.is_empty() {
        chosen = SCENARIOS.iter().map(|s| (*s).to_owned()).collect();
    }
    for c in &chosen {
        assert!(
            SCENARIOS.contains(&c.as_str()),
            "unknown scenario `{c}`; choose from {SCENARIOS:?}"
        );
    }
    // The client runs on one thread: the machine is small and the server needs the rest.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut report = Report { rows: Vec::new() };
    rt.block_on(async {
        for c in &chosen {
            match c.as_str() {
                "rules-http" => rules_http(&mut report).await,
                "batch" => batch(&mut report).await,
                "unindexed" => unindexed(&mut report).await,
                "single" => single(&mut report).await,
                "rss" => rss(&mut report).await,
                "notify" => notify(&mut report).await,
                "fairness" => fairness(&mut report).await,
                _ => unreachable!("checked above"),
            }
        }
    });
    report.print();
}
