//! Rules from `--rules` files and folders: loaded at start, reloaded when they change.
//!
//! File rules belong to the admin user and are marked `origin: file:PATH`. A file that stops
//! parsing keeps its previous rules (and logs why); a rule removed from its file is deleted.
//! Polling modification times every two seconds works the same on every filesystem and in
//! containers, where change notifications are unreliable.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tellify_core::rule;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::AppState;

const POLL: Duration = Duration::from_secs(2);

/// Every `.yaml`/`.yml` file under `paths`, with its modification time and size.
fn scan(paths: &[PathBuf]) -> BTreeMap<PathBuf, (Option<SystemTime>, u64)> {
    let mut out = BTreeMap::new();
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && let Ok(meta) = std::fs::metadata(&path)
        {
            out.insert(path, (meta.modified().ok(), meta.len()));
        }
    }
    out
}

/// Applies every rule file once; returns the file origins that loaded.
pub async fn load_all(state: &AppState, owner: &str, paths: &[PathBuf]) -> HashSet<String> {
    let files = scan(paths);
    let mut names: HashSet<String> = HashSet::new();
    let mut failed_origins: HashSet<String> = HashSet::new();
    for path in files.keys() {
        let origin = format!("file:{}", path.display());
        match load_file(state, owner, path, &origin).await {
            Ok(loaded) => names.extend(loaded),
            Err(e) => {
                error!(message = "A rule file does not load; its previous rules stay.", file = %path.display(), error = %e);
                failed_origins.insert(origin);
            }
        }
    }
    // Rules that came from files but are in none of them now are deleted.
    if let Ok(stored) = state.store.list_rules(Some(owner)).await {
        for r in stored {
            if r.origin.starts_with("file:")
                && !names.contains(&r.name)
                && !failed_origins.contains(&r.origin)
            {
                info!(message = "Rule removed from its file; deleting it.", rule = %r.name, origin = %r.origin);
                state.engine.delete_rule(owner, &r.name).await;
            }
        }
    }
    files
        .keys()
        .map(|p| format!("file:{}", p.display()))
        .collect()
}

async fn load_file(
    state: &AppState,
    owner: &str,
    path: &Path,
    origin: &str,
) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let docs = rule::parse_yaml(&text).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    for doc in docs {
        let name = doc.name().to_owned();
        let json = doc.to_json();
        let unchanged = state
            .store
            .get_rule(owner, &name)
            .await
            .ok()
            .flatten()
            .is_some_and(|r| r.doc == json && r.origin == origin);
        if !unchanged && let Err(e) = state.engine.put_rule(owner, doc, origin).await {
            warn!(message = "A rule in a file is invalid.", rule = %name, file = %path.display(), error = %e);
            continue;
        }
        names.push(name);
    }
    Ok(names)
}

/// Reloads the rule files whenever one changes, until shutdown.
pub async fn watch(
    state: AppState,
    owner: String,
    paths: Vec<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = scan(&paths);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = shutdown.changed() => return,
        }
        let now = scan(&paths);
        if now != seen {
            info!(message = "Rule files changed; reloading.");
            load_all(&state, &owner, &paths).await;
            seen = now;
        }
    }
}
