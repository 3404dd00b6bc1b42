//! The `tellify` commands: `serve`, `send`, `rules lint|test|apply|export`, `tokens`, `users`,
//! `version`. Exit codes: 0 success, 1 failure, 2 usage (clap's own).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tellify_core::eval::{Evaluator, dry_run};
use tellify_core::event::{self, Format};
use tellify_core::expr::Limits;
use tellify_core::rule::{self, RuleDoc, RuleSpec};

use crate::config::ServeArgs;

#[derive(Debug, Parser)]
#[command(
    name = "tellify",
    version,
    about = "Self-hosted event alerting server",
    after_help = ENVIRONMENT
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Environment variables that are no flag's, shown under `tellify --help` and
/// `tellify serve --help`.
const ENVIRONMENT: &str = "\
Environment:
  TELLIFY_ADMIN_TOKEN     `serve`, first start only: the admin's API token (else a new one is printed)
  TELLIFY_ADMIN_PASSWORD  `serve`, first start only: the admin's password (else a new one is printed)
  RUST_LOG                `serve`: log filter, e.g. `debug` (default: info,sqlx=warn,tower_http=warn)
Client commands (send, rules apply/export, tokens, users) take --server / TELLIFY_SERVER and
--token / TELLIFY_TOKEN. Documentation: docs/ in the repository; the API reference is served
at /api/docs.";

/// Where a client command finds the server.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// The Tellify server's base URL.
    #[arg(long, env = "TELLIFY_SERVER", default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// An API token.
    #[arg(long, env = "TELLIFY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    #[command(after_help = ENVIRONMENT)]
    Serve(ServeArgs),
    /// Send an event: `key:value` words as arguments, or JSON / NDJSON on stdin.
    Send {
        #[command(flatten)]
        server: ServerArgs,
        /// The source the event goes to.
        #[arg(long, default_value = "default")]
        source: String,
        /// `key:value` words of one event; without them, stdin is read.
        words: Vec<String>,
    },
    /// Work with rule files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Manage users (admin).
    #[command(subcommand)]
    Users(UsersCommand),
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check rule files offline: YAML, fields, JavaScript and templates.
    Lint {
        /// YAML rule files (each may hold several documents: rules, templates, instances).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule files over events offline and print what would fire.
    Test {
        /// YAML rule files; instances may use templates from any of them.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Events: NDJSON (`.ndjson`/`.jsonl`), JSON (`.json`) or key:value text (other).
        #[arg(long)]
        events: PathBuf,
        /// The source the events come from. Without it, each rule sees the events as coming
        /// from its own `source` (rules without one: from `default`).
        #[arg(long)]
        source: Option<String>,
        /// Time to let pass after the last event, e.g. `10m`.
        #[arg(long)]
        advance: Option<String>,
    },
    /// Show the difference between rule files and a server, then apply it.
    Apply {
        /// YAML rule files to store as the token's user's API rules.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
        /// Only show the difference.
        #[arg(long)]
        dry_run: bool,
        /// Also delete API rules that are in none of the files.
        #[arg(long)]
        prune: bool,
    },
    /// Print your rules on a server as YAML, ready for `rules apply` by the same user.
    Export {
        #[command(flatten)]
        server: ServerArgs,
        /// Admins: print this user's rules instead (for `rules apply` with their token).
        #[arg(long)]
        user: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a token (for yourself, or as admin for `--user`); prints it, shown this once.
    Create {
        #[command(flatten)]
        server: ServerArgs,
        /// Admins: the user the token is for (default: yourself).
        #[arg(long)]
        user: Option<String>,
        /// A label for the token, shown in token lists.
        #[arg(long)]
        name: Option<String>,
        /// `api` (default) or `metrics`: a token that may only read /metrics (admins).
        #[arg(long, value_parser = ["api", "metrics"])]
        scope: Option<String>,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        server: ServerArgs,
        /// The token's id (printed by `tokens create`; `GET /api/v1/tokens` lists them).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// Add a user (then give them a token: `tellify tokens create --user NAME`).
    Add {
        #[command(flatten)]
        server: ServerArgs,
        /// The user's name: 1 to 64 letters, digits and `._-@`.
        name: String,
        /// The user's email address (kept with the user; email channels name their own `to`).
        #[arg(long)]
        email: Option<String>,
        /// `user` (sees and manages their own objects) or `admin` (everyone's).
        #[arg(long, default_value = "user", value_parser = ["user", "admin"])]
        role: String,
        /// IANA time zone for the user's schedules and digests, e.g. `Europe/Berlin` [default: UTC].
        #[arg(long)]
        timezone: Option<String>,
    },
    /// List users.
    List {
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Version => {
            println!("tellify {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules(RulesCommand::Lint { files }) => lint(&files),
        Command::Rules(RulesCommand::Test {
            files,
            events,
            source,
            advance,
        }) => test(&files, &events, source.as_deref(), advance.as_deref()),
        command => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(client(command))
        }
    }
}

fn serve(args: ServeArgs) -> Result<ExitCode> {
    init_tracing(&args.log_format);
    let runtime = tokio::runtime::Runtime::new().context("Failed to start the async runtime")?;
    runtime.block_on(crate::app::run(args, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,tower_http=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// Every rule document in `files`, with the file each came from.
fn read_docs(files: &[PathBuf]) -> Result<Vec<(PathBuf, RuleDoc)>> {
    if files.is_empty() {
        bail!("name at least one rule file");
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("Failed to read {}", file.display()))?;
        let docs = rule::parse_yaml(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
        out.extend(docs.into_iter().map(|d| (file.clone(), d)));
    }
    Ok(out)
}

/// The rules to evaluate: plain rules, and instances made from templates in the same files.
fn specs(
    docs: &[(PathBuf, RuleDoc)],
) -> Vec<(PathBuf, String, Result<Option<RuleSpec>, rule::RuleError>)> {
    let templates: BTreeMap<&str, &rule::Template> = docs
        .iter()
        .filter_map(|(_, d)| match d {
            RuleDoc::Template(t) => Some((t.name.as_str(), t)),
            _ => None,
        })
        .collect();
    docs.iter()
        .map(|(file, doc)| {
            let lookup = |_: &str, name: &str| templates.get(name).map(|t| (*t).clone());
            (
                file.clone(),
                doc.name().to_owned(),
                crate::engine::resolve_doc(doc, "cli", &lookup),
            )
        })
        .collect()
}

fn lint(files: &[PathBuf]) -> Result<ExitCode> {
    let docs = read_docs(files)?;
    let mut evaluator = Evaluator::new(Limits::default());
    let mut failures = 0;
    for (file, name, spec) in specs(&docs) {
        let result = spec.and_then(|s| match s {
            Some(s) => evaluator.check("cli", &s),
            None => Ok(()),
        });
        match result {
            Ok(()) => println!("ok    {}: {name}", file.display()),
            Err(e) => {
                failures += 1;
                let place = match (e.line, e.column) {
                    (Some(l), Some(c)) => format!(" (line {l}, column {c})"),
                    (Some(l), None) => format!(" (line {l})"),
                    _ => String::new(),
                };
                println!("error {}: {name}: {e}{place}", file.display());
                for f in &e.failures {
                    println!("      params{}: {}", f.path, f.message);
                }
            }
        }
    }
    println!("{} rules, {failures} with errors", docs.len());
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn format_for(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("ndjson" | "jsonl") => Format::Ndjson,
        Some("json") => Format::Json,
        _ => Format::Text,
    }
}

/// The source events of `rules test` come from when neither `--source` nor a rule names one.
const TEST_SOURCE: &str = "default";

/// Which rules see the events as coming from which source: all of them from `--source`, or
/// (without it) each rule from its own `source`. A rule that reads a pattern of sources needs
/// `--source` to say which one the events are from.
fn test_groups(
    rules: Vec<rule::RuleSpec>,
    source: Option<&str>,
) -> Result<Vec<(String, Vec<rule::RuleSpec>)>> {
    if let Some(source) = source {
        for r in &rules {
            let Some(reads) = &r.source else { continue };
            let matches = tellify_core::matchers::glob(reads)
                .map(|g| g.is_match(source))
                .unwrap_or(false);
            if !matches {
                eprintln!(
                    "note: rule `{}` reads source `{reads}`, but the events come from `{source}` (--source): it sees none of them",
                    r.name
                );
            }
        }
        return Ok(vec![(source.to_owned(), rules)]);
    }
    let mut groups: Vec<(String, Vec<rule::RuleSpec>)> = Vec::new();
    for r in rules {
        let source = match &r.source {
            None => TEST_SOURCE.to_owned(),
            Some(s) if s.contains(['*', '?', '[', '{']) => bail!(
                "rule `{}` reads the sources matching `{s}`: say which one the events come from with --source",
                r.name
            ),
            Some(s) => s.clone(),
        };
        match groups.iter_mut().find(|(s, _)| *s == source) {
            Some((_, group)) => group.push(r),
            None => groups.push((source, vec![r])),
        }
    }
    Ok(groups)
}

fn test(
    files: &[PathBuf],
    events: &Path,
    source: Option<&str>,
    advance: Option<&str>,
) -> Result<ExitCode> {
    let docs = read_docs(files)?;
    let mut rules = Vec::new();
    for (file, name, spec) in specs(&docs) {
        match spec {
            Ok(Some(s)) => rules.push(s),
            Ok(None) => {}
            Err(e) => bail!("{}: {name}: {e}", file.display()),
        }
    }
    let text = std::fs::read_to_string(events)
        .with_context(|| format!("Failed to read {}", events.display()))?;
    let now = chrono::Utc::now().timestamp_millis();
    let objects = event::parse_body(format_for(events), &text)
        .map_err(|e| anyhow!("{}: {e}", events.display()))?;
    let advance_ms = advance
        .map(|a| a.parse::<rule::Duration>().map_err(|m| anyhow!(m)))
        .transpose()?
        .map_or(0, |d| d.millis());
    let (mut changes, mut errors) = (0, 0);
    // Rules of different sources run apart: an event comes from one source.
    for (source, rules) in test_groups(rules, source)? {
        let events = event::into_events(&source, objects.clone(), now)
            .map_err(|e| anyhow!("{}: {e}", events.display()))?;
        let result = dry_run(Limits::default(), "cli", rules, &events, now, advance_ms)
            .map_err(|e| anyhow!("{e}"))?;
        for change in &result.changes {
            println!("{}", serde_json::to_string(change)?);
        }
        for e in &result.errors {
            eprintln!("rule error: {e}");
        }
        changes += result.changes.len();
        errors += result.errors.len();
    }
    println!(
        "{} events, {changes} alert changes, {errors} rule errors",
        objects.len()
    );
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// A small API client: bearer token, JSON, and the server's error shape turned into messages.
struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(args: &ServerArgs) -> Result<Self> {
        let token = args
            .token
            .clone()
            .ok_or_else(|| anyhow!("no API token: pass --token or set TELLIFY_TOKEN"))?;
        Ok(Self {
            http: reqwest::Client::new(),
            base: args.server.trim_end_matches('/').to_owned(),
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<(String, &str)>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some((body, content_type)) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("Failed to reach {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            bail!("{status}: {message}");
        }
        Ok(value)
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value> {
        self.call(method, path, Some((body.to_string(), "application/json")))
            .await
    }
}

fn encode(segment: &str) -> String {
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

/// What a server shows of a rule, minus the fields it adds.
fn server_doc(mut v: Value) -> Value {
    if let Value::Object(map) = &mut v {
        for f in ["owner", "origin", "status", "error", "updated_at"] {
            map.remove(f);
        }
    }
    v
}

async fn client(command: Command) -> Result<ExitCode> {
    use reqwest::Method;
    match command {
        Command::Send {
            server,
            source,
            words,
        } => {
            let client = Client::new(&server)?;
            let (body, content_type) = if words.is_empty() {
                let mut input = String::new();
                std::io::stdin().read_to_string(&mut input)?;
                let trimmed = input.trim_start();
                let whole_json = serde_json::from_str::<Value>(trimmed).is_ok();
                let kind = if whole_json {
                    "application/json"
                } else if trimmed.starts_with('{') {
                    "application/x-ndjson"
                } else {
                    "text/plain"
                };
                (input, kind)
            } else {
                (words.join(" "), "text/plain")
            };
            let answer = client
                .call(
                    Method::POST,
                    &format!("/api/v1/events?source={}", encode(&source)),
                    Some((body, content_type)),
                )
                .await?;
            println!("accepted {}", answer["accepted"]);
        }
        Command::Rules(RulesCommand::Apply {
            files,
            server,
            dry_run,
            prune,
        }) => {
            let client = Client::new(&server)?;
            let docs = read_docs(&files)?;
            let current = client.call(Method::GET, "/api/v1/rules", None).await?;
            let me = client.call(Method::GET, "/api/v1/me", None).await?;
            let me = me["name"].as_str().unwrap_or_default().to_owned();
            let existing: BTreeMap<String, (Value, String)> = current["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["owner"] == json!(me))
                .map(|r| {
                    let origin = r["origin"].as_str().unwrap_or("api").to_owned();
                    (
                        r["name"].as_str().unwrap_or_default().to_owned(),
                        (server_doc(r.clone()), origin),
                    )
                })
                .collect();
            let mut plan = Vec::new();
            for (_, doc) in &docs {
                let json = doc.to_json();
                match existing.get(doc.name()) {
                    None => plan.push(('+', doc.name().to_owned(), Some(json))),
                    Some((old, _)) if *old != json => {
                        plan.push(('~', doc.name().to_owned(), Some(json)))
                    }
                    Some(_) => {}
                }
            }
            if prune {
                for (name, (_, origin)) in &existing {
                    if origin == "api" && !docs.iter().any(|(_, d)| d.name() == name) {
                        plan.push(('-', name.clone(), None));
                    }
                }
            }
            for (sign, name, _) in &plan {
                println!("{sign} {name}");
            }
            if plan.is_empty() {
                println!("no changes");
            }
            if !dry_run {
                for (_, name, doc) in plan {
                    let path = format!("/api/v1/rules/{}", encode(&name));
                    match doc {
                        Some(doc) => client
                            .json(Method::PUT, &path, &doc)
                            .await
                            .with_context(|| format!("rule {name}"))?,
                        None => client.call(Method::DELETE, &path, None).await?,
                    };
                }
            }
        }
        Command::Rules(RulesCommand::Export { server, user }) => {
            let client = Client::new(&server)?;
            let current = client.call(Method::GET, "/api/v1/rules", None).await?;
            // One owner's rules: the documents carry no owner, and `rules apply` stores them
            // as the token's user's (an admin sees everyone's rules in the list).
            let owner = match user {
                Some(user) => user,
                None => {
                    let me = client.call(Method::GET, "/api/v1/me", None).await?;
                    me["name"].as_str().unwrap_or_default().to_owned()
                }
            };
            let docs: Vec<Value> = current["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["owner"] == json!(owner))
                .cloned()
                .map(server_doc)
                .collect();
            print!(
                "{}",
                serde_saphyr::to_string_multiple(&docs).map_err(|e| anyhow!("{e}"))?
            );
        }
        Command::Tokens(TokensCommand::Create {
            server,
            user,
            name,
            scope,
        }) => {
            let client = Client::new(&server)?;
            let answer = client
                .json(
                    Method::POST,
                    "/api/v1/tokens",
                    &json!({"user": user, "name": name, "scope": scope}),
                )
                .await?;
            println!("{}", answer["token"].as_str().unwrap_or_default());
            eprintln!(
                "token id {} for {}, scope {} (shown once)",
                answer["id"], answer["user"], answer["scope"]
            );
        }
        Command::Tokens(TokensCommand::Revoke { server, id }) => {
            let client = Client::new(&server)?;
            client
                .call(
                    Method::DELETE,
                    &format!("/api/v1/tokens/{}", encode(&id)),
                    None,
                )
                .await?;
            println!("revoked {id}");
        }
        Command::Users(UsersCommand::Add {
            server,
            name,
            email,
            role,
            timezone,
        }) => {
            let client = Client::new(&server)?;
            let user = client
                .json(
                    Method::POST,
                    "/api/v1/users",
                    &json!({"name": name, "email": email, "role": role, "timezone": timezone}),
                )
                .await?;
            println!("added {} ({})", user["name"], user["role"]);
        }
        Command::Users(UsersCommand::List { server }) => {
            let client = Client::new(&server)?;
            let users = client.call(Method::GET, "/api/v1/users", None).await?;
            for u in users["users"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}",
                    u["name"].as_str().unwrap_or(""),
                    u["role"].as_str().unwrap_or(""),
                    u["timezone"].as_str().unwrap_or("")
                );
            }
        }
        Command::Serve(_) | Command::Version | Command::Rules(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
    Ok(ExitCode::SUCCESS)
}
