//! `tellify serve` settings: flags, their `TELLIFY_*` environment variables, and the YAML
//! config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to serve HTTP on.
    #[arg(long, env = "TELLIFY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the SQLite database, the secret key and the storage reserve live
    /// [default: ./tellify-data; with --demo, ./tellify-demo-data].
    #[arg(long, env = "TELLIFY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` (default: DATA_DIR/tellify.db). `postgres://` is refused: not supported
    /// by this version yet.
    #[arg(long, env = "TELLIFY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// YAML file with top-level `rules` (paths, relative to the file) and `smtp` (the SMTP
    /// settings; stored at a start that finds none stored, after which the stored ones win:
    /// change them with PUT /api/v1/config/smtp). This version refuses a file with `sources`
    /// or `channels`.
    #[arg(long, env = "TELLIFY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Rule files or folders of them (repeat the flag, or separate paths with commas): the
    /// admin's rules, loaded at start and reloaded when the files change.
    #[arg(long = "rules", env = "TELLIFY_RULES", value_delimiter = ',')]
    pub rules: Vec<PathBuf>,
    /// `text` or `json` logs.
    #[arg(long, env = "TELLIFY_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Load the example rules and feed synthetic events, in a data directory of the demo's own
    /// (./tellify-demo-data unless --data-dir names one). A data directory that holds anything
    /// else is refused, unless --demo-on-existing-data.
    #[arg(long, env = "TELLIFY_DEMO")]
    pub demo: bool,
    /// With --demo: run it on a data directory that holds other data too. The example rules
    /// are added as admin's (rules of the same name are kept as they are), and the synthetic
    /// events reach every rule of their sources, whose alerts notify as any other.
    #[arg(long, env = "TELLIFY_DEMO_ON_EXISTING_DATA", requires = "demo", value_parser = clap::builder::BoolishValueParser::new())]
    pub demo_on_existing_data: bool,
    /// Largest request body in bytes.
    #[arg(long, env = "TELLIFY_BODY_LIMIT", default_value_t = 10 * 1024 * 1024)]
    pub body_limit: usize,
    /// Event requests per second per API token (0: no limit).
    #[arg(long, env = "TELLIFY_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,
    /// CPU budget of one JavaScript evaluation, in milliseconds.
    #[arg(long, env = "TELLIFY_JS_CPU_MS", default_value_t = 10)]
    pub js_cpu_ms: u64,
    /// JavaScript memory per rule owner, in MiB.
    #[arg(long, env = "TELLIFY_JS_MEMORY_MIB", default_value_t = 16)]
    pub js_memory_mib: usize,
    /// Engine time each rule owner's rules may use per second, in milliseconds (0: no limit).
    /// An owner over it is throttled: their events wait while other owners' go on.
    #[arg(long, env = "TELLIFY_JS_OWNER_CPU_MS", default_value_t = 250)]
    pub js_owner_cpu_ms: u64,
    /// How long evaluated events are kept in the log.
    #[arg(long, env = "TELLIFY_EVENT_RETENTION", default_value = "1d")]
    pub event_retention: String,
    /// How long resolved alerts and their history are kept.
    #[arg(long, env = "TELLIFY_HISTORY_RETENTION", default_value = "90d")]
    pub history_retention: String,
    /// Disk space kept in reserve in DATA_DIR, in MiB: released when the disk fills, so alerts
    /// and their deliveries can still be written while events are refused; 0 turns it off.
    #[arg(long, env = "TELLIFY_STORAGE_RESERVE_MIB", default_value_t = 8)]
    pub storage_reserve_mib: u64,
    /// On SIGTERM, how long requests in flight (and then the delivery worker's round) may take
    /// to finish before their connections are closed.
    #[arg(long, env = "TELLIFY_SHUTDOWN_TIMEOUT", default_value = "30s")]
    pub shutdown_timeout: String,
    /// Serve `/metrics` without a token. By default it needs an admin token or a token made
    /// with `"scope": "metrics"`, since it names every user's rules and sources.
    #[arg(long, env = "TELLIFY_METRICS_PUBLIC", value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics_public: bool,
    /// Tests only: start a manual clock at this epoch-ms time, moved by `POST /api/v1/_test/clock`.
    #[arg(long, env = "TELLIFY_FAKE_CLOCK", hide = true)]
    pub fake_clock: Option<i64>,
}

impl ServeArgs {
    /// The data directory: the one named, else the default (the demo's own for `--demo`).
    pub fn data_dir(&self) -> PathBuf {
        match &self.data_dir {
            Some(dir) => dir.clone(),
            None if self.demo => PathBuf::from(DEMO_DATA_DIR),
            None => PathBuf::from(DATA_DIR),
        }
    }
}

/// The default data directory.
pub const DATA_DIR: &str = "./tellify-data";
/// The default data directory of `--demo`, so a demo never writes into the user's own data.
pub const DEMO_DATA_DIR: &str = "./tellify-demo-data";

/// The config file (`--config`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub rules: Vec<PathBuf>,
    #[serde(default)]
    pub sources: Vec<serde_json::Value>,
    #[serde(default)]
    pub channels: Vec<serde_json::Value>,
    #[serde(default)]
    pub smtp: Option<crate::notify::email::SmtpSettings>,
}

impl ConfigFile {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("Failed to read the config file {}", path.display()))?;
        let config: ConfigFile = serde_saphyr::from_str(&text)
            .with_context(|| format!("The config file {} is not valid", path.display()))?;
        // Refuse rather than ignore: a config that names brokers must not start silently without them.
        if !config.sources.is_empty() {
            bail!(
                "{}: broker `sources` are not supported by this version yet",
                path.display()
            );
        }
        if !config.channels.is_empty() {
            bail!(
                "{}: `channels` in the config file are not supported by this version yet; create them with PUT /api/v1/channels/NAME",
                path.display()
            );
        }
        if let Some(smtp) = &config.smtp {
            smtp.check()
                .map_err(|m| anyhow::anyhow!("{}: smtp: {m}", path.display()))?;
        }
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        Ok(ConfigFile {
            rules: config.rules.into_iter().map(|p| base.join(p)).collect(),
            ..config
        })
    }
}
