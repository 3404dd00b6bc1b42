//! `tellify serve --demo`: the example rule packs and a feed of synthetic events, so a
//! newcomer sees alerts open and resolve within seconds of the first start.
//!
//! The demo writes rules and events as `admin`, and its events reach every rule of their
//! sources, whose alerts notify as any other. So it keeps to a database of its own: one it
//! made (the `demo` setting records that), or a new one, which it then claims. A database
//! that holds anything else is refused unless the user says otherwise
//! (`--demo-on-existing-data`); even then a rule of the user's is never replaced by an example.

use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::json;
use tellify_core::rule;
use tokio::sync::watch;
use tracing::warn;

use crate::api::AppState;
use crate::auth::ADMIN;
use crate::store::{NewEvent, Outbox};

/// The setting that marks a database the demo made.
const SETTING: &str = "demo";

/// Makes sure the demo may run on this database: one it made before, or a new one (`fresh`:
/// no user yet), which it marks as its own. Any other needs `on_existing_data`.
pub async fn claim(
    outbox: &dyn Outbox,
    fresh: bool,
    on_existing_data: bool,
    now: i64,
) -> Result<()> {
    if outbox.get_setting(SETTING).await?.is_some() {
        return Ok(());
    }
    if fresh {
        return outbox
            .put_setting(SETTING, &json!({"created_at": now}), now)
            .await;
    }
    if on_existing_data {
        warn!(
            message = "Running the demo on a database that holds other data: its events reach every rule of their sources."
        );
        return Ok(());
    }
    bail!(
        "this database holds data the demo did not make, and the demo would add its rules and \
         feed its events to them; run the demo with its own data directory (leave out \
         --data-dir, or name a new one), or pass --demo-on-existing-data"
    )
}

/// The example packs shipped in `examples/`, built into the binary.
pub const EXAMPLES: [(&str, &str); 7] = [
    ("dataos.yaml", include_str!("../../../examples/dataos.yaml")),
    ("builds.yaml", include_str!("../../../examples/builds.yaml")),
    ("disk.yaml", include_str!("../../../examples/disk.yaml")),
    (
        "heartbeat.yaml",
        include_str!("../../../examples/heartbeat.yaml"),
    ),
    (
        "dt-gateway.yaml",
        include_str!("../../../examples/dt-gateway.yaml"),
    ),
    (
        "sensors.yaml",
        include_str!("../../../examples/sensors.yaml"),
    ),
    (
        "datahub.yaml",
        include_str!("../../../examples/datahub.yaml"),
    ),
];

/// Loads the example rules and starts the synthetic feed; the task ends at `shutdown`.
pub async fn start(
    state: AppState,
    shutdown: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>> {
    for (file, text) in EXAMPLES {
        for doc in rule::parse_yaml(text)? {
            let name = doc.name().to_owned();
            let existing = state.store.get_rule(ADMIN, &name).await?;
            if existing.is_some_and(|r| !r.origin.starts_with("demo:")) {
                warn!(message = "A rule of the same name exists; the example is left out.", rule = %name);
                continue;
            }
            if let Err(e) = state
                .engine
                .put_rule(ADMIN, doc, &format!("demo:{file}"))
                .await
            {
                warn!(message = "An example rule does not load.", rule = %name, error = %e);
            }
        }
    }
    Ok(tokio::spawn(feed(state, shutdown)))
}

/// One synthetic event of each kind every two seconds, drifting so alerts open and close.
async fn feed(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut tick: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.changed() => return,
        }
        tick += 1;
        let now = state.clock.now();
        let wave = |period: u64, lo: f64, hi: f64| {
            let phase = (tick % period) as f64 / period as f64;
            lo + (hi - lo) * (phase * std::f64::consts::TAU).sin().abs()
        };
        let mut events = vec![
            (
                "disk",
                json!({"host": "cadfs01", "fs": "/sarc/cad", "kind": "disk", "used_pct": (wave(90, 80.0, 99.0) * 10.0).round() / 10.0}),
            ),
            (
                "metrics",
                json!({"host": "web-1", "cpu": (wave(200, 40.0, 99.0)).round()}),
            ),
            (
                "cluster.metrics",
                json!({"numAppsRunning": (tick / 15) % 9, "numAppsPending": 1}),
            ),
            (
                "vitals",
                json!({"patient": "p-7", "bpm": wave(60, 70.0, 140.0).round()}),
            ),
        ];
        // The license server's heartbeat stops for two minutes out of every five.
        events.push((
            "heartbeats",
            json!({"host": "caddashboard", "kind": "heartbeat", "words": ["alive"]}),
        ));
        if tick % 150 < 90 {
            events.push((
                "heartbeats",
                json!({"host": "cadlicense", "kind": "heartbeat", "words": ["alive"]}),
            ));
        }
        // A DataOS run fails on the first tick and every 20 after, and recovers 10 ticks later,
        // so the first alert shows within seconds of starting.
        let state_name = match tick % 20 {
            1 => Some("FAILED"),
            11 => Some("SUCCEEDED"),
            _ => None,
        };
        if let Some(state_name) = state_name {
            for (action, kind) in [("wf-demo/ingest", "job"), ("wf-demo/wf-demo", "workflow")] {
                events.push(("dataos", json!({"data": {"actionName": action, "kind": kind, "namespace": "public", "state": state_name, "owner": "demo"}})));
            }
        }
        // Builds: one block's place step fails each tick, cycling through six blocks per run.
        let block = format!("gc_{}", ["a", "b", "c", "d", "e", "f"][(tick % 6) as usize]);
        events.push(("builds", json!({"project": "vr0", "block": block, "user": "demo", "runtag": format!("r{}", tick / 12),
            "status": if tick.is_multiple_of(3) { "good" } else { "fail" }, "words": ["place", "completed"]})));
        let events = events
            .into_iter()
            .map(|(source, data)| NewEvent {
                source: source.into(),
                time: now,
                received: now,
                hops: 0,
                data,
            })
            .collect();
        if let Err(e) = state.ingest.submit(ADMIN, events).await {
            warn!(message = "Demo events were not stored.", error = %e);
        }
    }
}
