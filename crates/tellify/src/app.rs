//! The composition root: builds every part of the server and wires the pipeline
//! sources → engine → store, with the API around the store.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tellify_core::expr::Limits;
use tokio::sync::{broadcast, watch};
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::auth::{hash_token, new_token};
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::{ConfigFile, ServeArgs};
use crate::engine::{self, Command, EngineParts};
use crate::metrics::Metrics;
use crate::sources::Ingest;
use crate::store::sqlite::SqliteStore;
use crate::store::{Outbox, Store, User};

pub use crate::auth::ADMIN;

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    engine_thread: std::thread::JoinHandle<()>,
    /// Tasks that end at the shutdown signal: the rule-file watcher, the demo feed, the
    /// pruner, the storage watcher.
    tasks: Vec<(&'static str, tokio::task::JoinHandle<()>)>,
    /// The delivery worker, and its own stop signal, given once the engine has stopped.
    worker: tokio::task::JoinHandle<()>,
    worker_stop: watch::Sender<bool>,
    /// How long a stop waits for requests in flight, and then for the delivery worker (ms).
    grace: i64,
}

impl Running {
    /// Stops gracefully, in the pipeline's order: no new connections, and requests in flight
    /// finish (live streams end at once), up to the grace period; the tasks that feed or tend
    /// the store stop; the ingest writer stores what it was given; the engine evaluates and
    /// commits everything accepted; then the delivery worker sends what is due by then and
    /// records every outcome, up to the grace period, so no delivery is left `sending`.
    pub async fn stop(self) -> Result<()> {
        let grace = Duration::from_millis(self.grace.max(0) as u64);
        let _ = self.shutdown.send(true);
        let mut server = self.server;
        match tokio::time::timeout(grace, &mut server).await {
            Ok(served) => served.context("The HTTP server task failed")??,
            Err(_) => {
                warn!(
                    message = "Requests still in flight after the shutdown timeout; closing their connections.",
                    timeout_ms = self.grace
                );
                server.abort();
            }
        }
        for (name, task) in self.tasks {
            if tokio::time::timeout(grace, task).await.is_err() {
                warn!(
                    message = "A task did not stop within the shutdown timeout.",
                    task = name
                );
            }
        }
        // Events it cannot store within the grace period are answered with an error, not lost.
        if tokio::time::timeout(grace, self.state.ingest.close())
            .await
            .is_err()
        {
            warn!(message = "The ingest writer did not finish within the shutdown timeout.");
        }
        self.state.engine.send(Command::Shutdown);
        let engine_thread = self.engine_thread;
        tokio::task::spawn_blocking(move || engine_thread.join())
            .await
            .context("Failed to wait for the engine")?
            .map_err(|_| anyhow::anyhow!("The engine thread panicked"))?;
        // Deliveries it could not record go again at the next start (they stay `sending`).
        let _ = self.worker_stop.send(true);
        if tokio::time::timeout(grace, self.worker).await.is_err() {
            warn!(
                message =
                    "The delivery worker did not finish its round within the shutdown timeout."
            );
        }
        info!(message = "Stopped.");
        Ok(())
    }
}

/// The server's listener, telling `closed` when axum drops it: at a graceful stop, once no new
/// connection will be accepted.
struct Closing {
    inner: tokio::net::TcpListener,
    closed: watch::Sender<bool>,
}

impl axum::serve::Listener for Closing {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        axum::serve::Listener::accept(&mut self.inner).await
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl Drop for Closing {
    fn drop(&mut self) {
        let _ = self.closed.send(true);
    }
}

/// Opens the store the settings name: the same database behind both traits.
pub async fn open_store(args: &ServeArgs) -> Result<(Arc<dyn Store>, Arc<dyn Outbox>)> {
    let data_dir = args.data_dir();
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("Failed to create the data directory {}", data_dir.display()))?;
    let store = match args.database_url.as_deref() {
        None => Arc::new(SqliteStore::open(&data_dir.join("tellify.db")).await?),
        Some(url) if url.starts_with("sqlite:") => Arc::new(SqliteStore::open_url(url).await?),
        Some(url) if url.starts_with("postgres") => {
            anyhow::bail!("PostgreSQL is not supported by this version yet; use sqlite://PATH")
        }
        Some(url) => anyhow::bail!(
            "unknown database URL scheme in `{}`",
            url.split(':').next().unwrap_or("")
        ),
    };
    Ok((store.clone(), store))
}

/// The SMTP settings: those saved over the API, else the config file's (then saved).
async fn load_smtp(
    outbox: &dyn Outbox,
    keys: &crate::crypto::SecretBox,
    from_file: Option<crate::notify::email::SmtpSettings>,
    now: i64,
) -> Result<crate::notify::email::SharedSmtp> {
    let stored = match outbox.get_setting("smtp").await? {
        Some(v) => Some(crate::api::config::open_smtp(v, keys)?),
        None => match from_file {
            Some(smtp) => {
                outbox
                    .put_setting("smtp", &crate::api::config::seal_smtp(&smtp, keys), now)
                    .await?;
                Some(smtp)
            }
            None => None,
        },
    };
    Ok(Arc::new(std::sync::RwLock::new(stored)))
}

/// The server's secret key (for encrypting channel secrets), created on first start.
fn ensure_secret_key(data_dir: &Path) -> Result<()> {
    let path = data_dir.join("secret.key");
    if path.exists() {
        return Ok(());
    }
    let mut key = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut key);
    std::fs::write(&path, hex::encode(key))
        .with_context(|| format!("Failed to write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// On first start, creates `admin` with a token and web password (from the environment or
/// new ones, printed once to stderr).
async fn bootstrap_admin(store: &dyn Store, now: i64) -> Result<()> {
    if store.user_count().await? > 0 {
        return Ok(());
    }
    let env_token = std::env::var("TELLIFY_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    let env_password = std::env::var("TELLIFY_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    let token = env_token.clone().unwrap_or_else(new_token);
    let password = env_password
        .clone()
        .unwrap_or_else(|| new_token()[4..28].to_owned());
    let user = User {
        name: ADMIN.into(),
        email: None,
        role: "admin".into(),
        timezone: "UTC".into(),
        password_hash: Some(api::users::hash_password(&password)?),
    };
    store.create_user(&user, now).await?;
    store
        .create_token(
            ADMIN,
            "bootstrap",
            &hash_token(&token),
            crate::auth::TokenScope::Api,
            now,
        )
        .await?;
    if env_token.is_none() || env_password.is_none() {
        eprintln!("\nFirst start: created the user `admin`. Shown once, so keep them:");
        if env_token.is_none() {
            eprintln!("  admin API token: {token}");
            eprintln!(
                "    (API requests: `Authorization: Bearer TOKEN`; the tellify commands: export TELLIFY_TOKEN=TOKEN)"
            );
        }
        if env_password.is_none() {
            eprintln!("  admin password:  {password}");
            eprintln!(
                "    (for the web dashboard of a later version; nothing in this one asks for it)"
            );
        }
        eprintln!();
    }
    Ok(())
}

/// Builds and starts everything; returns once the server listens.
pub async fn start(args: ServeArgs) -> Result<Running> {
    let file = match &args.config {
        Some(path) => ConfigFile::load(path)?,
        None => ConfigFile::default(),
    };
    let clock: Arc<dyn Clock> = match args.fake_clock {
        Some(start) => {
            warn!(message = "Using a manual test clock.", start);
            Arc::new(ManualClock::new(start))
        }
        None => Arc::new(SystemClock),
    };
    let retention = Retention {
        events: parse_duration("--event-retention", &args.event_retention)?,
        alerts: parse_duration("--history-retention", &args.history_retention)?,
    };
    let (store, outbox) = open_store(&args).await?;
    let data_dir = args.data_dir();
    // Before the first start's admin is created: a database without users is a new one.
    let fresh = store.user_count().await? == 0;
    if args.demo {
        crate::demo::claim(
            outbox.as_ref(),
            fresh,
            args.demo_on_existing_data,
            clock.now(),
        )
        .await
        .with_context(|| format!("--demo with the data directory {}", data_dir.display()))?;
    }
    ensure_secret_key(&data_dir)?;
    bootstrap_admin(store.as_ref(), clock.now()).await?;
    let metrics = Arc::new(Metrics::new());
    let (alerts, _) = broadcast::channel(4096);
    let limits = Limits {
        cpu_budget: Duration::from_millis(args.js_cpu_ms.max(1)),
        memory_limit: args.js_memory_mib.max(1) * 1024 * 1024,
        ..Limits::default()
    };
    let owners = crate::owners::Owners::load(store.as_ref()).await?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let (engine, engine_thread) = engine::start(EngineParts {
        store: store.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
        alerts: alerts.clone(),
        limits,
        owner_budget: (args.js_owner_cpu_ms > 0).then(|| {
            tellify_core::eval::OwnerBudget::per_second(Duration::from_millis(args.js_owner_cpu_ms))
        }),
        owners: owners.clone(),
        outbox: outbox.clone(),
        wake: wake.clone(),
    })
    .await?;
    let ingest = Ingest::start(store.clone(), engine.clone(), metrics.clone(), owners);
    let reserve = crate::storage_watch::Reserve::new(
        &data_dir,
        args.storage_reserve_mib.saturating_mul(1024 * 1024),
    )
    .map(Arc::new);
    if let Some(reserve) = reserve.clone() {
        // Laid down before serving; a disk already too full to hold it is no reason not to start.
        let filled = tokio::task::spawn_blocking(move || reserve.fill()).await?;
        if let Err(e) = filled {
            warn!(message = "Failed to lay down the storage reserve; a full disk will leave no room for its alert.", error = %e);
        }
    }
    let keys = crate::crypto::SecretBox::load(&data_dir)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .context("Failed to build the HTTP client")?;
    let smtp = load_smtp(outbox.as_ref(), &keys, file.smtp.clone(), clock.now()).await?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Live streams end once the server has stopped accepting (its listener is dropped), so no
    // new request slips in between a stream's end and the stop.
    let (closed, closed_rx) = watch::channel(false);
    let senders = Arc::new(crate::notify::Senders::new(http, smtp.clone()));
    let policy = crate::notify::Policy::default();
    let breakers = Arc::new(policy.breakers());
    let state = AppState {
        store: store.clone(),
        outbox: outbox.clone(),
        keys: keys.clone(),
        wake: wake.clone(),
        senders: senders.clone(),
        breakers: breakers.clone(),
        smtp,
        engine,
        ingest,
        clock: clock.clone(),
        metrics,
        alerts,
        limits,
        body_limit: args.body_limit,
        rate_limit: args.rate_limit,
        buckets: Arc::new(Mutex::new(HashMap::new())),
        fake_clock: args.fake_clock.is_some(),
        shutdown: closed_rx,
        revocations: Arc::new(watch::Sender::new(0)),
        metrics_public: args.metrics_public,
    };
    let mut tasks = vec![(
        "storage watcher",
        tokio::spawn(crate::storage_watch::run(
            store.clone(),
            state.engine.clone(),
            reserve,
            shutdown_rx.clone(),
        )),
    )];
    let mut rule_paths = args.rules.clone();
    rule_paths.extend(file.rules);
    if !rule_paths.is_empty() {
        crate::rule_files::load_all(&state, ADMIN, &rule_paths).await;
        tasks.push((
            "rule-file watcher",
            tokio::spawn(crate::rule_files::watch(
                state.clone(),
                ADMIN.into(),
                rule_paths,
                shutdown_rx.clone(),
            )),
        ));
    }
    if args.demo {
        tasks.push((
            "demo feed",
            crate::demo::start(state.clone(), shutdown_rx.clone()).await?,
        ));
    }
    // The first pass runs before serving, so a changed retention applies at once.
    prune_once(store.as_ref(), clock.now(), retention).await;
    tasks.push((
        "pruner",
        tokio::spawn(prune(
            store.clone(),
            clock.clone(),
            retention,
            shutdown_rx.clone(),
        )),
    ));
    let worker = crate::notify::Worker {
        outbox,
        clock: clock.clone(),
        metrics: state.metrics.clone(),
        keys,
        senders,
        breakers,
        policy,
        wake,
    };
    let (worker_stop, worker_stop_rx) = watch::channel(false);
    let worker = tokio::spawn(worker.run(worker_stop_rx));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("Failed to listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let listener = Closing {
        inner: listener,
        closed,
    };
    let app = api::router(state.clone());
    let mut stop = shutdown_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    info!(message = "Tellify is listening.", %addr);
    Ok(Running {
        addr,
        state,
        shutdown,
        server,
        engine_thread,
        tasks,
        worker,
        worker_stop,
        grace: parse_duration("--shutdown-timeout", &args.shutdown_timeout)?,
    })
}

/// How long evaluated events and resolved alerts are kept, in ms.
#[derive(Clone, Copy)]
struct Retention {
    events: i64,
    alerts: i64,
}

fn parse_duration(flag: &str, text: &str) -> Result<i64> {
    text.parse::<tellify_core::rule::Duration>()
        .map(|d| d.millis())
        .map_err(|m| anyhow::anyhow!("{flag}: {m}"))
}

/// Keeps the event log and alert history bounded, every ten minutes after the first pass
/// at start.
async fn prune(
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    retention: Retention,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = shutdown.changed() => return,
        }
        prune_once(store.as_ref(), clock.now(), retention).await;
    }
}

async fn prune_once(store: &dyn Store, now: i64, retention: Retention) {
    match store.prune_events(now - retention.events).await {
        Ok(0) => {}
        Ok(n) => info!(message = "Pruned old events.", events = n),
        Err(e) => warn!(message = "Failed to prune old events.", error = %format!("{e:#}")),
    }
    match store.prune_alerts(now - retention.alerts).await {
        Ok(0) => {}
        Ok(n) => info!(
            message = "Pruned resolved alerts past their retention.",
            alerts = n
        ),
        Err(e) => warn!(message = "Failed to prune old alerts.", error = %format!("{e:#}")),
    }
}

/// Runs until `shutdown` completes.
pub async fn run(args: ServeArgs, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
    let demo = args.demo.then(|| args.data_dir());
    let running = start(args).await?;
    // The first line is what scripts (and the integration tests) look for: keep its shape.
    let base = format!("http://{}", running.addr);
    eprintln!("Tellify listening on {base}");
    eprintln!("  API:           {base}/api/v1/… (with `Authorization: Bearer TOKEN`)");
    eprintln!(
        "  API reference: {base}/api/docs (the OpenAPI document: {base}/api/v1/openapi.json)"
    );
    eprintln!("  health:        {base}/healthz, {base}/readyz; Prometheus metrics: {base}/metrics");
    if let Some(dir) = demo {
        eprintln!(
            "  demo:          example rules and synthetic events; its data is in {}",
            dir.display()
        );
    }
    shutdown.await;
    info!(message = "Shutting down.");
    running.stop().await
}
