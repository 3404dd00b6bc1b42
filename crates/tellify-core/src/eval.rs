//! The evaluator: rules applied to events and to the passing of time; alert changes out.
//!
//! It is a deterministic state machine. Time comes in as arguments (`at`, `now` in epoch ms),
//! never from a clock, so the same inputs always give the same changes: the engine replays
//! stored events after a crash and gets the alerts it would have had, and tests drive it
//! without sleeping. Everything it must remember across restarts — `for` timers, count
//! windows, heartbeat deadlines, script state — is per (rule, key) state that it reports as
//! dirty ([`Evaluator::take_dirty`]) and takes back with [`Evaluator::restore_state`].
//!
//! JavaScript runs in one [`Sandbox`] per rule owner, so one user's runaway rule spends only
//! that user's memory budget, and an event is converted into each owner's sandbox once. Each
//! rule compiles into its own [`crate::expr::Scope`], so rules of one owner do not see each
//! other's stray variables (and the sandbox's intrinsics are frozen).
//!
//! Two things keep one user's rules from stalling everyone else's:
//! - a rule in `error` rests: it is not run again before its back-off has passed (1 s doubling
//!   to 5 min, in event time; see [`backoff_ms`]) or it is saved again;
//! - with [`Evaluator::set_owner_budget`], each owner's rules are measured with a meter the
//!   server injects, and an owner who has used up their share of engine time is deferred at an
//!   event of the log ([`Evaluator::on_logged_event`]): their rules (and timers) skip the events
//!   that follow until the engine catches them up in order with [`Evaluator::resume`]. Where
//!   each deferred owner is ([`Deferred`]) is reported for storage like rule state.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use serde_json::{Value, json};

use crate::access::Access;
use crate::alert::{AlertKey, Change, Content, ResolveReason, Status, as_number};
use crate::event::{Event, lookup};
use crate::expr::{Arg, ExprError, FnId, Limits, Sandbox, ScriptAction, ValId};
use crate::index::{Filing, RuleId, RuleIndex, identifiers, required_equalities, topic_references};
use crate::rule::{RuleError, RuleKind, RuleSpec};
use crate::template::Templates;

/// The names a condition sees: the event (also as `e`), its source and time (ms).
const CONDITION_PARAMS: [&str; 4] = ["event", "e", "source", "time"];
/// How deep rules may chain through `ctx.emit` before the chain is cut.
pub const MAX_HOPS: u8 = 5;
/// How many events one script call may emit. With [`MAX_HOPS`] this bounds what one event
/// can multiply into, so one rule cannot stall the engine for everyone.
pub const MAX_EMITS_PER_CALL: usize = 10;
/// The default check interval of a threshold rule on `_topic` alone.
const DEFAULT_EVERY_MS: i64 = 10_000;
/// A rule in `error` is not run again for this long after its first failure, then twice as
/// long after each failure in a row, up to [`MAX_BACKOFF_MS`]; saving it again resets that.
pub const FIRST_BACKOFF_MS: i64 = 1_000;
pub const MAX_BACKOFF_MS: i64 = 300_000;

/// How long a rule that failed `failures` times in a row rests before it runs again.
pub fn backoff_ms(failures: u32) -> i64 {
    let doublings = failures.saturating_sub(1).min(20);
    (FIRST_BACKOFF_MS << doublings).min(MAX_BACKOFF_MS)
}

/// Reads engine time for the per-owner budget: a monotonic count of nanoseconds. The server
/// provides it; the core reads no clock.
pub type Meter = Box<dyn Fn() -> u64>;

/// Tells whether events after a seq are in the log, waiting to be evaluated. The server
/// provides it (its ingest knows the newest seq); the core does not see the queue.
pub type Backlog = Box<dyn Fn(i64) -> bool>;

/// Each rule owner's share of engine time (see [`Evaluator::set_owner_budget`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnerBudget {
    /// Engine time an owner's rules may use per second, on average.
    pub per_second: std::time::Duration,
    /// The most an owner may use at once, when it has saved up (the size of the bucket).
    pub burst: std::time::Duration,
}

impl OwnerBudget {
    /// `per_second` of engine time per second, spent in bursts of at most a tenth of it (but
    /// not less than 5 ms), so another owner's event never waits much longer than that.
    pub fn per_second(per_second: std::time::Duration) -> Self {
        OwnerBudget {
            per_second,
            burst: (per_second / 10).max(std::time::Duration::from_millis(5)),
        }
    }
}

/// Where a deferred owner's rules are in the event log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Deferred {
    /// Every event up to this seq has been evaluated by all of the owner's rules.
    pub position: i64,
    /// The event after `position` that some of the owner's rules have evaluated, and which.
    pub partial: Option<(i64, Vec<String>)>,
}

/// A rule failed at run time (its condition threw or ran out of budget).
#[derive(Debug, Clone, PartialEq)]
pub struct RuleFailure {
    pub owner: String,
    pub rule: String,
    pub message: String,
}

/// A rule's saved state for one key changed; `None` means it is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct StateUpdate {
    pub owner: String,
    pub rule: String,
    pub key: String,
    pub state: Option<Value>,
}

/// What the evaluator decided since it was last drained.
#[derive(Debug, Default)]
pub struct Outcome {
    pub changes: Vec<Change>,
    /// Events made by scripts' `ctx.emit`, with the rule owner and hop count: the engine
    /// stores and evaluates them.
    pub emitted: Vec<(String, Event, u8)>,
    pub failures: Vec<RuleFailure>,
    /// Rules whose error status changed: `Some(message)` failing, `None` healthy again.
    pub status: Vec<(String, String, Option<String>)>,
    pub evaluations: u64,
}

#[derive(Debug, Clone, PartialEq)]
enum KeyState {
    /// `match` with `resolve_after`: the last matching event.
    Match { last: i64 },
    /// `threshold`: when the condition started holding.
    Threshold { since: i64 },
    /// `count`: arrival times (and distinct values) inside the window.
    Count {
        events: VecDeque<(i64, Option<String>)>,
    },
    /// `absence`: the last event of the key.
    Absence { last: i64 },
    /// `script`: the rule's `ctx.state`, under the empty key.
    Script { state: Value },
}

impl KeyState {
    fn to_json(&self) -> Value {
        match self {
            KeyState::Match { last } => json!({"last": last}),
            KeyState::Threshold { since } => json!({"since": since}),
            KeyState::Count { events } => json!({"events": events}),
            KeyState::Absence { last } => json!({"last": last}),
            KeyState::Script { state } => json!({"state": state}),
        }
    }

    fn from_json(kind: RuleKind, v: &Value) -> Option<KeyState> {
        let int = |f: &str| v.get(f).and_then(Value::as_i64);
        Some(match kind {
            RuleKind::Match => KeyState::Match { last: int("last")? },
            RuleKind::Threshold => KeyState::Threshold {
                since: int("since")?,
            },
            RuleKind::Count => KeyState::Count {
                events: serde_json::from_value(v.get("events")?.clone()).ok()?,
            },
            RuleKind::Absence => KeyState::Absence { last: int("last")? },
            RuleKind::Script => KeyState::Script {
                state: v.get("state")?.clone(),
            },
        })
    }
}

struct Compiled {
    owner: String,
    spec: Arc<RuleSpec>,
    when: Option<FnId>,
    value: Option<FnId>,
    resolve_when: Option<FnId>,
    script: Option<FnId>,
    templates: Templates,
    uses_topic: bool,
    /// The sources its scripts read literally through `_topic`: until each has data, the
    /// rule cannot hold and is not run.
    topics: Vec<String>,
    /// A threshold whose condition reads only `_topic`: checked every `every`, not per event.
    topic_only: bool,
    /// A threshold's scope: the string equalities at the top of its `when`. Events that do not
    /// meet them neither raise nor resolve its alerts (a `kind:cpu` event says nothing about a
    /// rule on `event.kind == 'disk' && event.used_pct > 90`).
    scope: Vec<crate::index::Equality>,
    open: u32,
    error: Option<String>,
    /// Failed runs in a row; reset by a run that succeeds or by saving the rule.
    failures: u32,
    /// While in `error`: the rule is not run before this time (event or engine time, ms).
    retry_at: Option<i64>,
}

impl Compiled {
    /// Whether the rule is in `error` and resting from it at `now`.
    fn resting(&self, now: i64) -> bool {
        self.retry_at.is_some_and(|t| now < t)
    }

    fn alert(&self, id: &str, key: &str) -> AlertKey {
        AlertKey {
            id: id.to_owned(),
            owner: self.owner.clone(),
            rule: self.spec.name.clone(),
            key: key.to_owned(),
        }
    }
}

/// An owner's bucket of engine time, in nanoseconds.
struct Usage {
    balance: i64,
    /// The meter's reading at the last refill.
    at: u64,
}

struct Budget {
    per_second: u64,
    burst: i64,
    meter: Meter,
    backlog: Backlog,
    /// When the current catch-up turn began (see [`Evaluator::begin_turn`]).
    turn: Option<u64>,
}

/// A deferred owner, with rule ids for the partly evaluated event.
struct Deferral {
    position: i64,
    partial: Option<(i64, HashSet<RuleId>)>,
}

/// The last candidate rule on an event, by owner, and the last of any other owner before it.
#[derive(Default)]
struct LastOwners {
    last: Option<(String, usize)>,
    other: Option<usize>,
}

impl LastOwners {
    /// Whether a rule of an owner but `owner` comes after `position`.
    fn other_after(&self, owner: &str, position: usize) -> bool {
        match &self.last {
            None => false,
            Some((last, at)) if last != owner => *at > position,
            Some(_) => self.other.is_some_and(|at| at > position),
        }
    }
}

/// Whose rules a pass over an event or the clock runs.
#[derive(Debug, Clone, Copy)]
enum Pass<'a> {
    /// Every owner but the deferred ones.
    Current,
    /// One deferred owner catching up.
    Owner(&'a str),
}

/// What [`Evaluator::resume`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resumed {
    /// The owner's rules have all evaluated it (now or before).
    Done,
    /// The owner's budget ran out part-way; the event stays next.
    Paused,
    /// The owner is not deferred.
    NotDeferred,
}

struct OwnerBox {
    sandbox: Sandbox,
    /// Sources whose latest event this sandbox's `_topic` does not have yet.
    stale_topics: HashSet<String>,
    topic_rules: usize,
}

#[derive(Debug, Clone)]
struct Open {
    status: Status,
    id: String,
    acked: bool,
    /// When the next `repeat_every` notification is due.
    repeat_at: Option<i64>,
}

/// Applies rules to events and time. See the module documentation.
pub struct Evaluator {
    limits: Limits,
    boxes: HashMap<String, OwnerBox>,
    rules: Vec<Option<Compiled>>,
    by_name: HashMap<(String, String), RuleId>,
    index: RuleIndex,
    index_dirty: bool,
    states: HashMap<(RuleId, String), KeyState>,
    open: HashMap<(RuleId, String), Open>,
    timers: BTreeSet<(i64, RuleId, String)>,
    deadlines: HashMap<(RuleId, String), i64>,
    /// Threshold rules on `_topic` alone, by next check time.
    ticks: BTreeSet<(i64, RuleId)>,
    /// Firing, unacknowledged alerts of rules with `repeat_every`, by next repeat.
    repeats: BTreeSet<(i64, RuleId, String)>,
    /// Gives each new alert its id.
    ids: Box<dyn FnMut() -> String>,
    topics: HashMap<String, Value>,
    pub access: Access,
    dirty: HashSet<(RuleId, String)>,
    /// States of deleted rules to report gone.
    removed_states: Vec<StateUpdate>,
    out: Outcome,
    candidates: Vec<RuleId>,
    /// The latest event or engine time given, for rules' back-off.
    now: i64,
    budget: Option<Budget>,
    usage: HashMap<String, Usage>,
    deferred: HashMap<String, Deferral>,
    /// Owners whose deferral changed since [`Evaluator::take_deferrals`].
    deferral_changed: HashSet<String>,
    /// How many rules each owner has: an owner alone has nobody to make way for.
    rule_owners: HashMap<String, usize>,
    /// The latest seq of the log every owner but the deferred ones has evaluated.
    latest_seq: i64,
}

impl Evaluator {
    /// An evaluator whose alerts are numbered `a1`, `a2`, … (dry runs and tests).
    pub fn new(limits: Limits) -> Self {
        let mut n = 0u64;
        Self::with_ids(
            limits,
            Box::new(move || {
                n += 1;
                format!("a{n}")
            }),
        )
    }

    /// An evaluator whose new alerts take their ids from `ids`.
    pub fn with_ids(limits: Limits, ids: Box<dyn FnMut() -> String>) -> Self {
        Self {
            repeats: BTreeSet::new(),
            ids,
            limits,
            boxes: HashMap::new(),
            rules: Vec::new(),
            by_name: HashMap::new(),
            index: RuleIndex::default(),
            index_dirty: false,
            states: HashMap::new(),
            open: HashMap::new(),
            timers: BTreeSet::new(),
            deadlines: HashMap::new(),
            ticks: BTreeSet::new(),
            topics: HashMap::new(),
            access: Access::default(),
            dirty: HashSet::new(),
            removed_states: Vec::new(),
            out: Outcome::default(),
            candidates: Vec::new(),
            now: i64::MIN,
            budget: None,
            usage: HashMap::new(),
            deferred: HashMap::new(),
            deferral_changed: HashSet::new(),
            rule_owners: HashMap::new(),
            latest_seq: 0,
        }
    }

    fn owner_box(&mut self, owner: &str) -> Result<&mut OwnerBox, RuleError> {
        if !self.boxes.contains_key(owner) {
            let sandbox = Sandbox::new(self.limits).map_err(|e| {
                RuleError::new(None, format!("cannot start the JavaScript sandbox: {e}"))
            })?;
            self.boxes.insert(
                owner.to_owned(),
                OwnerBox {
                    sandbox,
                    stale_topics: HashSet::new(),
                    topic_rules: 0,
                },
            );
        }
        Ok(self.boxes.get_mut(owner).expect("inserted above"))
    }

    /// Checks that a rule would compile for `owner`, without keeping it.
    pub fn check(&mut self, owner: &str, spec: &RuleSpec) -> Result<(), RuleError> {
        spec.validate()?;
        let compiled = self.compile(owner, spec)?;
        self.forget_fns(&compiled);
        Ok(())
    }

    fn compile(&mut self, owner: &str, spec: &RuleSpec) -> Result<Compiled, RuleError> {
        let templates = Templates::compile(spec.templates())?;
        if let Some(source) = &spec.source
            && source.contains(['*', '?', '[', '{'])
        {
            globset::Glob::new(source)
                .map_err(|e| RuleError::new(Some("source"), format!("not a valid glob: {e}")))?;
        }
        let boxed = self.owner_box(owner)?;
        // The rule's functions share the variables they assign without declaring them, and no
        // other rule sees them.
        let scope = boxed.sandbox.new_scope();
        let mut compiled_fns: Vec<FnId> = Vec::new();
        let mut compile =
            |field: &str, src: Option<&str>, script: bool| -> Result<Option<FnId>, RuleError> {
                let Some(src) = src else { return Ok(None) };
                let result = if script {
                    boxed.sandbox.compile_script_in(scope, src)
                } else {
                    boxed.sandbox.compile_expr_in(scope, src, &CONDITION_PARAMS)
                };
                match result {
                    Ok(id) => {
                        compiled_fns.push(id);
                        Ok(Some(id))
                    }
                    Err(e) => Err(js_error(field, e)),
                }
            };
        let fns = (|| {
            Ok::<_, RuleError>((
                compile("when", spec.when.as_deref(), false)?,
                compile("value", spec.value.as_deref(), false)?,
                compile("resolve_when", spec.resolve_when.as_deref(), false)?,
                compile("script", spec.script.as_deref(), true)?,
            ))
        })();
        let (when, value, resolve_when, script) = match fns {
            Ok(fns) => fns,
            Err(e) => {
                for id in compiled_fns {
                    boxed.sandbox.forget(id);
                }
                return Err(e);
            }
        };
        let uses_topic = spec.scripts().any(|(_, src)| src.contains("_topic"));
        let topic_only = spec.kind == RuleKind::Threshold
            && spec.when.as_deref().is_some_and(|w| {
                identifiers(w).map_or(w.contains("_topic") && !w.contains("event"), |ids| {
                    ids.iter().any(|i| i == "_topic")
                        && !ids.iter().any(|i| i == "event" || i == "e")
                })
            });
        Ok(Compiled {
            owner: owner.to_owned(),
            spec: Arc::new(spec.clone()),
            when,
            value,
            resolve_when,
            script,
            templates,
            uses_topic,
            topics: {
                let mut names: Vec<String> = spec
                    .scripts()
                    .flat_map(|(_, src)| topic_references(src))
                    .collect();
                names.sort();
                names.dedup();
                names
            },
            topic_only,
            scope: match (spec.kind, &spec.when) {
                (RuleKind::Threshold, Some(w)) => required_equalities(w).unwrap_or_default(),
                _ => Vec::new(),
            },
            open: 0,
            error: None,
            failures: 0,
            retry_at: None,
        })
    }

    fn forget_fns(&mut self, c: &Compiled) {
        if let Some(b) = self.boxes.get_mut(&c.owner) {
            for id in [c.when, c.value, c.resolve_when, c.script]
                .into_iter()
                .flatten()
            {
                b.sandbox.forget(id);
            }
        }
    }

    /// Adds or replaces `owner`'s rule. Replacing keeps its alerts and state when the kind is
    /// the same; disabling resolves its alerts. Returns the changes that causes.
    pub fn upsert(&mut self, owner: &str, spec: RuleSpec, now: i64) -> Result<(), RuleError> {
        spec.validate()?;
        let compiled = self.compile(owner, &spec)?;
        let name_key = (owner.to_owned(), spec.name.clone());
        let id = match self.by_name.get(&name_key) {
            Some(&id) => {
                let old = self.rules[id as usize].take().expect("named rules exist");
                self.forget_fns(&old);
                if old.uses_topic {
                    self.owner_box(owner)?.topic_rules -= 1;
                }
                // Alerts stay with a rule that keeps its kind and keys; otherwise no event could
                // close them any more, so they are resolved now.
                let reason = if spec.disabled {
                    Some(ResolveReason::RuleDisabled)
                } else if old.spec.kind != spec.kind
                    || old.spec.key != spec.key
                    || old.spec.group_by != spec.group_by
                {
                    Some(ResolveReason::RuleChanged)
                } else {
                    None
                };
                let mut compiled = compiled;
                compiled.open = old.open;
                self.rules[id as usize] = Some(compiled);
                if let Some(reason) = reason {
                    self.close_rule(id, now, reason);
                }
                id
            }
            None => {
                let id = RuleId::try_from(self.rules.len()).expect("fewer than 4 billion rules");
                self.rules.push(Some(compiled));
                self.by_name.insert(name_key, id);
                *self.rule_owners.entry(owner.to_owned()).or_default() += 1;
                id
            }
        };
        let rule = self.rules[id as usize].as_ref().expect("just stored");
        if rule.uses_topic {
            let topics: Vec<String> = self
                .topics
                .keys()
                .filter(|t| self.access.can_read(owner, t))
                .cloned()
                .collect();
            let b = self.owner_box(owner)?;
            b.topic_rules += 1;
            b.stale_topics.extend(topics);
        }
        self.index_dirty = true;
        self.ticks.retain(|(_, r)| *r != id);
        self.reschedule_rule(id, now);
        Ok(())
    }

    /// Deletes a rule, resolving its open alerts.
    pub fn remove(&mut self, owner: &str, name: &str, now: i64) {
        let Some(id) = self.by_name.remove(&(owner.to_owned(), name.to_owned())) else {
            return;
        };
        if let Some(count) = self.rule_owners.get_mut(owner) {
            *count -= 1;
            if *count == 0 {
                self.rule_owners.remove(owner);
            }
        }
        self.close_rule(id, now, ResolveReason::RuleRemoved);
        // The rule's slot is emptied below, so its cleared states are reported from here.
        let cleared: Vec<String> = self
            .dirty
            .iter()
            .filter(|(r, _)| *r == id)
            .map(|(_, k)| k.clone())
            .collect();
        for key in cleared {
            self.dirty.remove(&(id, key.clone()));
            self.removed_states.push(StateUpdate {
                owner: owner.to_owned(),
                rule: name.to_owned(),
                key,
                state: None,
            });
        }
        if let Some(old) = self.rules[id as usize].take() {
            self.forget_fns(&old);
            if old.uses_topic
                && let Some(b) = self.boxes.get_mut(owner)
            {
                b.topic_rules -= 1;
            }
        }
        self.ticks.retain(|(_, r)| *r != id);
        self.index_dirty = true;
    }

    /// Resolves every open alert of a rule and forgets its state.
    fn close_rule(&mut self, id: RuleId, now: i64, reason: ResolveReason) {
        let keys: Vec<String> = self
            .open
            .keys()
            .filter(|(r, _)| *r == id)
            .map(|(_, k)| k.clone())
            .collect();
        for key in keys {
            self.close(id, &key, now, reason);
        }
        let state_keys: Vec<String> = self
            .states
            .keys()
            .filter(|(r, _)| *r == id)
            .map(|(_, k)| k.clone())
            .collect();
        for key in state_keys {
            self.set_state(id, &key, None);
        }
    }

    /// The names of the active rules, as (owner, name).
    pub fn rule_names(&self) -> impl Iterator<Item = &(String, String)> {
        self.by_name.keys()
    }

    /// Takes back a rule's error from before a restart: the rule shows it until it next runs
    /// well, and a failure on its next run rests it as a second failure in a row.
    pub fn restore_error(&mut self, owner: &str, name: &str, message: &str) {
        let Some(&id) = self.by_name.get(&(owner.to_owned(), name.to_owned())) else {
            return;
        };
        if let Some(rule) = self.rules[id as usize].as_mut() {
            rule.error = Some(message.to_owned());
            rule.failures = 1;
        }
    }

    /// When a rule in `error` runs again, if it is resting.
    pub fn retry_at(&self, owner: &str, name: &str) -> Option<i64> {
        let id = *self.by_name.get(&(owner.to_owned(), name.to_owned()))?;
        self.rules[id as usize].as_ref()?.retry_at
    }

    /// The current error of a rule, if its last evaluation failed.
    pub fn rule_error(&self, owner: &str, name: &str) -> Option<&str> {
        let id = *self.by_name.get(&(owner.to_owned(), name.to_owned()))?;
        self.rules[id as usize].as_ref()?.error.as_deref()
    }

    /// Takes back a state saved before a restart. Call after the rule is loaded.
    pub fn restore_state(&mut self, owner: &str, rule: &str, key: &str, state: &Value, now: i64) {
        let Some(&id) = self.by_name.get(&(owner.to_owned(), rule.to_owned())) else {
            return;
        };
        let Some(kind) = self.rules[id as usize].as_ref().map(|r| r.spec.kind) else {
            return;
        };
        if let Some(s) = KeyState::from_json(kind, state) {
            self.states.insert((id, key.to_owned()), s);
            self.schedule(id, key, now);
        }
    }

    /// Takes back an alert that was open before a restart. Call after the rule is loaded.
    ///
    /// Repeats that fell due while the server was down are not made up: the next one is the
    /// next multiple of `repeat_every` after `now` (see `schedule_repeat`).
    pub fn restore_open(
        &mut self,
        alert: &AlertKey,
        status: Status,
        fired_at: Option<i64>,
        acked: bool,
        now: i64,
    ) {
        let Some(&id) = self.by_name.get(&(alert.owner.clone(), alert.rule.clone())) else {
            return;
        };
        if status == Status::Resolved {
            return;
        }
        let open = Open {
            status,
            id: alert.id.clone(),
            acked,
            repeat_at: None,
        };
        if self.open.insert((id, alert.key.clone()), open).is_none()
            && let Some(r) = self.rules[id as usize].as_mut()
        {
            r.open += 1;
        }
        if let Some(fired_at) = fired_at {
            self.schedule_repeat(id, &alert.key, fired_at, now);
        }
    }

    /// Where `alert` is held open — only if it is that very alert (by id): a person acts on
    /// the alert they saw, not on a newer one that has since opened for the same key.
    fn open_slot(&self, alert: &AlertKey) -> Option<(RuleId, String)> {
        let &id = self
            .by_name
            .get(&(alert.owner.clone(), alert.rule.clone()))?;
        let slot = (id, alert.key.clone());
        self.open
            .get(&slot)
            .is_some_and(|open| open.id == alert.id)
            .then_some(slot)
    }

    /// A person acknowledged an alert: no more repeats.
    pub fn acknowledge(&mut self, alert: &AlertKey) {
        let Some(slot) = self.open_slot(alert) else {
            return;
        };
        let id = slot.0;
        if let Some(open) = self.open.get_mut(&slot) {
            open.acked = true;
            if let Some(due) = open.repeat_at.take() {
                self.repeats.remove(&(due, id, alert.key.clone()));
            }
        }
    }

    /// Sets the next repeat of a firing alert from when it fired: the first multiple of
    /// `repeat_every` after it that is still ahead, or `now` if one was missed.
    fn schedule_repeat(&mut self, id: RuleId, key: &str, fired_at: i64, now: i64) {
        let Some(every) = self.rules[id as usize]
            .as_ref()
            .and_then(|r| r.spec.repeat_every)
            .map(|d| d.millis())
        else {
            return;
        };
        let slot = (id, key.to_owned());
        let Some(open) = self.open.get_mut(&slot) else {
            return;
        };
        if open.acked || open.status != Status::Firing {
            return;
        }
        if let Some(old) = open.repeat_at.take() {
            self.repeats.remove(&(old, id, key.to_owned()));
        }
        // The next multiple of `every` after `now`: repeats that fell due while the server was
        // down are not made up in a burst (the last one sent is not known, so none is repeated).
        let elapsed = now.saturating_sub(fired_at).max(0);
        let due = fired_at.saturating_add((elapsed / every + 1).saturating_mul(every));
        open.repeat_at = Some(due);
        self.repeats.insert((due, id, key.to_owned()));
    }

    /// Whether the evaluator holds `alert` open (pending or firing).
    pub fn is_open(&self, alert: &AlertKey) -> bool {
        self.open_slot(alert).is_some()
    }

    /// A person resolved an alert by hand: forget it, so the next match opens a new one.
    pub fn resolve_by_hand(&mut self, alert: &AlertKey, now: i64) -> bool {
        let Some((id, _)) = self.open_slot(alert) else {
            return false;
        };
        self.close(id, &alert.key, now, ResolveReason::Manual);
        let kind = self.rules[id as usize].as_ref().map(|r| r.spec.kind);
        match kind {
            // A heartbeat still missing may fire again one period from now.
            Some(RuleKind::Absence) => {
                self.set_state(id, &alert.key, Some(KeyState::Absence { last: now }));
                self.schedule(id, &alert.key, now);
            }
            Some(RuleKind::Script) => {}
            _ => self.set_state(id, &alert.key, None),
        }
        true
    }

    /// The earliest time a timer is due, for the engine's sleep.
    /// Deferred owners' timers wait for [`Evaluator::resume`], so they do not count.
    pub fn next_deadline(&self) -> Option<i64> {
        let live = |id: RuleId| self.in_pass(id, Pass::Current);
        let timer = self
            .timers
            .iter()
            .find(|(_, id, _)| live(*id))
            .map(|(t, _, _)| *t);
        let tick = self.ticks.iter().find(|(_, id)| live(*id)).map(|(t, _)| *t);
        let repeat = self
            .repeats
            .iter()
            .find(|(_, id, _)| live(*id))
            .map(|(t, _, _)| *t);
        timer.into_iter().chain(tick).chain(repeat).min()
    }

    /// Takes the decisions made so far.
    pub fn drain(&mut self) -> Outcome {
        std::mem::take(&mut self.out)
    }

    /// The states changed since the last call, for the store.
    pub fn take_dirty(&mut self) -> Vec<StateUpdate> {
        let mut out = std::mem::take(&mut self.removed_states);
        for (id, key) in std::mem::take(&mut self.dirty) {
            let Some(rule) = self.rules.get(id as usize).and_then(Option::as_ref) else {
                continue;
            };
            out.push(StateUpdate {
                owner: rule.owner.clone(),
                rule: rule.spec.name.clone(),
                key: key.clone(),
                state: self.states.get(&(id, key)).map(KeyState::to_json),
            });
        }
        out
    }

    /// The latest event of each source, as conditions see it through `_topic`.
    pub fn set_topic(&mut self, source: &str, data: &Value) {
        self.topics.insert(source.to_owned(), data.clone());
        for (owner, b) in self.boxes.iter_mut() {
            if b.topic_rules > 0 && self.access.can_read(owner, source) {
                b.stale_topics.insert(source.to_owned());
            }
        }
    }

    fn rebuild_index(&mut self) {
        let mut index = RuleIndex::default();
        for (id, rule) in self.rules.iter().enumerate() {
            let Some(rule) = rule else { continue };
            if !rule.spec.is_active() || (rule.topic_only && rule.spec.source.is_none()) {
                continue;
            }
            let filing = filing(&rule.spec);
            // A glob that failed to compile was refused when the rule was saved.
            let _ = index.add(id as RuleId, rule.spec.source.as_deref(), &filing);
        }
        self.index = index;
        self.index_dirty = false;
    }

    /// Fires every timer due by `now`, but those of deferred owners.
    pub fn advance(&mut self, now: i64) {
        self.advance_pass(now, Pass::Current);
    }

    /// Whether rule `id` takes part in `pass`.
    fn in_pass(&self, id: RuleId, pass: Pass) -> bool {
        if matches!(pass, Pass::Current) && self.deferred.is_empty() {
            return true;
        }
        let Some(rule) = self.rules.get(id as usize).and_then(Option::as_ref) else {
            return true;
        };
        match pass {
            Pass::Current => !self.deferred.contains_key(&rule.owner),
            Pass::Owner(owner) => rule.owner == owner,
        }
    }

    fn advance_pass(&mut self, now: i64, pass: Pass) {
        self.now = now;
        // Timers of owners outside the pass are held back, and put back afterwards.
        let mut held = Vec::new();
        while let Some((due, id, key)) = self.timers.first().cloned() {
            if due > now {
                break;
            }
            self.timers.pop_first();
            if !self.in_pass(id, pass) {
                held.push((due, id, key));
                continue;
            }
            self.deadlines.remove(&(id, key.clone()));
            self.on_timer(id, &key, due.max(0), now);
        }
        self.timers.extend(held);
        let mut held = Vec::new();
        while let Some((due, id, key)) = self.repeats.first().cloned() {
            if due > now {
                break;
            }
            self.repeats.pop_first();
            if !self.in_pass(id, pass) {
                held.push((due, id, key));
                continue;
            }
            let Some(open) = self.open.get_mut(&(id, key.clone())) else {
                continue;
            };
            open.repeat_at = None;
            let repeats = open.status == Status::Firing
                && !open.acked
                && self.rules[id as usize]
                    .as_ref()
                    .is_some_and(|r| r.spec.repeat_every.is_some());
            if repeats {
                if let Some(alert) = self.open_alert(id, &key) {
                    self.out.changes.push(Change::Repeat { alert, at: due });
                }
                // After a stall, one repeat now and the next on the schedule, not a burst.
                self.schedule_repeat(id, &key, due, now);
            }
        }
        self.repeats.extend(held);
        let mut held = Vec::new();
        while let Some((due, id)) = self.ticks.first().copied() {
            if due > now {
                break;
            }
            self.ticks.pop_first();
            if !self.in_pass(id, pass) {
                held.push((due, id));
                continue;
            }
            let start = self.budget.as_ref().map(|b| (b.meter)());
            self.on_tick(id, now);
            let end = self.budget.as_ref().map(|b| (b.meter)());
            if let (Some(start), Some(end), Some(owner)) = (
                start,
                end,
                self.rules[id as usize].as_ref().map(|r| r.owner.clone()),
            ) {
                self.charge(&owner, start, end);
            }
        }
        self.ticks.extend(held);
    }

    /// Gives each owner a share of engine time: the evaluator then measures (with `meter`) the
    /// time each owner's rules take, and an owner who has used up their share is deferred: their
    /// rules skip the events that follow (in [`Evaluator::on_logged_event`]) until the engine has
    /// caught them up with [`Evaluator::resume`], in order, while other owners go on.
    ///
    /// The share only binds when someone else waits: an owner out of time is deferred only if
    /// another owner has rules and either one of those is still to run on this event or
    /// `backlog` says more events are waiting. Alone, or with nobody waiting, an owner keeps
    /// the whole engine, and a deferred owner catches up without a budget while the log has
    /// nothing new.
    pub fn set_owner_budget(&mut self, budget: OwnerBudget, meter: Meter, backlog: Backlog) {
        let nanos = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.budget = Some(Budget {
            per_second: nanos(budget.per_second),
            burst: i64::try_from(nanos(budget.burst)).unwrap_or(i64::MAX),
            meter,
            backlog,
            turn: None,
        });
    }

    /// Whether events the current pass has not evaluated yet are waiting in the log.
    pub fn backlog(&self) -> bool {
        self.budget
            .as_ref()
            .is_some_and(|b| (b.backlog)(self.latest_seq))
    }

    /// Whether an owner other than `owner` has rules.
    fn others_have_rules(&self, owner: &str) -> bool {
        self.rule_owners.len() > 1
            || self.rule_owners.len() == 1 && !self.rule_owners.contains_key(owner)
    }

    /// Starts a deferred owner's turn at catching up: [`Evaluator::resume`] pauses once the
    /// turn has lasted a burst, even if the owner has earned more meanwhile, so other owners'
    /// events never wait much longer than that.
    pub fn begin_turn(&mut self) {
        if let Some(budget) = self.budget.as_mut() {
            budget.turn = Some((budget.meter)());
        }
    }

    /// Refills `owner`'s bucket up to `now` (a meter reading); whether it has time left.
    fn refill(&mut self, owner: &str, now: u64) -> bool {
        let Some(budget) = &self.budget else {
            return true;
        };
        let usage = match self.usage.get_mut(owner) {
            Some(u) => u,
            None => self.usage.entry(owner.to_owned()).or_insert(Usage {
                balance: budget.burst,
                at: now,
            }),
        };
        let elapsed = u128::from(now.saturating_sub(usage.at));
        let earned = elapsed * u128::from(budget.per_second) / 1_000_000_000;
        usage.at = now;
        usage.balance = usage
            .balance
            .saturating_add(i64::try_from(earned).unwrap_or(i64::MAX))
            .min(budget.burst);
        usage.balance > 0
    }

    /// Charges `owner` the time from `start` to `end` (meter readings). The debt stops at one
    /// burst: time an owner took while nobody else waited is not held against them later.
    fn charge(&mut self, owner: &str, start: u64, end: u64) {
        let spent = end.saturating_sub(start);
        if let (Some(usage), Some(budget)) = (self.usage.get_mut(owner), self.budget.as_ref()) {
            usage.balance = usage
                .balance
                .saturating_sub(i64::try_from(spent).unwrap_or(i64::MAX))
                .max(-budget.burst);
        }
    }

    /// Whether `owner` may take a turn at catching up now: when they have engine time left, or
    /// when nothing new waits in the log (the engine is otherwise idle).
    pub fn may_catch_up(&mut self, owner: &str) -> bool {
        !self.backlog() || self.has_budget(owner)
    }

    /// Whether `owner` has engine time left now (always, without a budget).
    fn has_budget(&mut self, owner: &str) -> bool {
        match &self.budget {
            Some(budget) => {
                let now = (budget.meter)();
                self.refill(owner, now)
            }
            None => true,
        }
    }

    /// The deferred owners and the last seq each has fully evaluated.
    pub fn deferred_owners(&self) -> Vec<(String, i64)> {
        let mut out: Vec<(String, i64)> = self
            .deferred
            .iter()
            .map(|(o, d)| (o.clone(), d.position))
            .collect();
        out.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        out
    }

    pub fn is_deferred(&self, owner: &str) -> bool {
        self.deferred.contains_key(owner)
    }

    /// The owner has caught up with the log: their rules take part in every event again.
    pub fn undefer(&mut self, owner: &str) {
        if self.deferred.remove(owner).is_some() {
            self.deferral_changed.insert(owner.to_owned());
        }
    }

    /// The deferrals changed since the last call, for the store: `None` means no longer
    /// deferred. Committed with the batch that caused them, like rule state.
    pub fn take_deferrals(&mut self) -> Vec<(String, Option<Deferred>)> {
        let mut out = Vec::new();
        for owner in std::mem::take(&mut self.deferral_changed) {
            let state = self.deferred.get(&owner).map(|d| Deferred {
                position: d.position,
                partial: d.partial.as_ref().map(|(seq, done)| {
                    let mut names: Vec<String> = done
                        .iter()
                        .filter_map(|id| self.rules.get(*id as usize).and_then(Option::as_ref))
                        .map(|r| r.spec.name.clone())
                        .collect();
                    names.sort();
                    (*seq, names)
                }),
            });
            out.push((owner, state));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Takes back a deferral saved before a restart. Call after the owner's rules are loaded.
    pub fn restore_deferral(&mut self, owner: &str, deferred: &Deferred) {
        let partial = deferred.partial.as_ref().map(|(seq, names)| {
            let done: HashSet<RuleId> = names
                .iter()
                .filter_map(|n| self.by_name.get(&(owner.to_owned(), n.clone())).copied())
                .collect();
            (*seq, done)
        });
        self.deferred.insert(
            owner.to_owned(),
            Deferral {
                position: deferred.position,
                partial,
            },
        );
    }

    /// Applies every candidate rule to one event that arrived at `at`.
    pub fn on_event(&mut self, event: &Event, hops: u8, at: i64) {
        self.run_event(None, event, hops, at, Pass::Current);
    }

    /// Applies the candidate rules of every owner that is not deferred to the event `seq` of
    /// the log. With a budget (see [`Evaluator::set_owner_budget`]), an owner whose time has run
    /// out is deferred from this event on: their remaining rules skip it, and the events after.
    pub fn on_logged_event(&mut self, seq: i64, event: &Event, hops: u8, at: i64) {
        self.run_event(Some(seq), event, hops, at, Pass::Current);
    }

    /// Catches a deferred owner up by one event, `seq` of the log, the first after the owner's
    /// position: their rules that have not yet evaluated it do, and the owner's timers up to
    /// `at` fire first. Stops part-way when the owner's time runs out.
    pub fn resume(&mut self, owner: &str, seq: i64, event: &Event, hops: u8, at: i64) -> Resumed {
        match self.deferred.get(owner) {
            None => Resumed::NotDeferred,
            Some(d) if seq <= d.position => Resumed::Done,
            Some(_) => {
                if self.run_event(Some(seq), event, hops, at, Pass::Owner(owner)) {
                    Resumed::Done
                } else {
                    Resumed::Paused
                }
            }
        }
    }

    /// Applies the candidate rules of `pass` to an event. Returns false when an owner catching
    /// up ran out of time part-way.
    fn run_event(
        &mut self,
        seq: Option<i64>,
        event: &Event,
        hops: u8,
        at: i64,
        pass: Pass,
    ) -> bool {
        self.advance_pass(at, pass);
        // Topic data is the latest event of each source: an owner catching up does not move
        // it back.
        if matches!(pass, Pass::Current) {
            self.set_topic(&event.source, &event.data);
            if let Some(seq) = seq {
                self.latest_seq = seq;
            }
        }
        if self.index_dirty {
            self.rebuild_index();
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        self.index
            .candidates(&event.source, &event.data, &mut candidates);
        // Rules an owner catching up had already run on this event before pausing.
        let mut done: HashSet<RuleId> = match (pass, seq) {
            (Pass::Owner(owner), Some(seq)) => self
                .deferred
                .get_mut(owner)
                .and_then(|d| d.partial.take())
                .filter(|(s, _)| *s == seq)
                .map(|(_, done)| done)
                .unwrap_or_default(),
            _ => HashSet::new(),
        };
        let budgeted = self.budget.is_some() && seq.is_some();
        let mut loaded: Vec<(String, u64, ValId)> = Vec::new();
        // The owner and start of the rule running, to charge its time.
        let mut running: Option<(String, u64)> = None;
        let mut applied: Vec<(String, RuleId)> = Vec::new();
        let mut paused = false;
        // For an owner out of time, whether another owner's rule is still to run on this event.
        let mut last_others: Option<LastOwners> = None;
        for (position, &id) in candidates.iter().enumerate() {
            let Some(rule) = self.rules[id as usize].as_ref() else {
                continue;
            };
            if !self.access.can_read(&rule.owner, &event.source)
                || rule.resting(at)
                || done.contains(&id)
                || !self.in_pass(id, pass)
            {
                continue;
            }
            let owner = rule.owner.clone();
            let uses_topic = rule.uses_topic;
            if budgeted {
                let now = self.budget.as_ref().map_or(0, |b| (b.meter)());
                if let Some((previous, start)) = running.take() {
                    self.charge(&previous, start, now);
                }
                let out_of_time = !self.refill(&owner, now);
                let make_way = match pass {
                    Pass::Current => {
                        out_of_time
                            && self.others_have_rules(&owner)
                            && (self.backlog()
                                || last_others
                                    .get_or_insert_with(|| self.last_owners(&candidates))
                                    .other_after(&owner, position))
                    }
                    Pass::Owner(_) => {
                        let turn_over = self.budget.as_ref().is_some_and(|b| {
                            b.turn.is_some_and(|turn| {
                                i64::try_from(now.saturating_sub(turn)).unwrap_or(i64::MAX)
                                    > b.burst
                            })
                        });
                        let new_events = self.backlog();
                        (out_of_time && new_events)
                            || (turn_over && (new_events || self.deferred.len() > 1))
                    }
                };
                if make_way {
                    match (pass, seq) {
                        (Pass::Current, Some(seq)) => {
                            let ran: HashSet<RuleId> = applied
                                .iter()
                                .filter(|(o, _)| *o == owner)
                                .map(|(_, id)| *id)
                                .collect();
                            let partial = (!ran.is_empty()).then_some((seq, ran));
                            self.deferred.insert(
                                owner.clone(),
                                Deferral {
                                    position: seq - 1,
                                    partial,
                                },
                            );
                            self.deferral_changed.insert(owner);
                            continue;
                        }
                        _ => {
                            paused = true;
                            break;
                        }
                    }
                }
                running = Some((owner.clone(), now));
                applied.push((owner.clone(), id));
            }
            let Some(val) = self.event_in_box(&owner, event, &mut loaded) else {
                continue;
            };
            if uses_topic {
                self.sync_topics(&owner);
            }
            self.apply(id, event, val, hops, at);
        }
        if let Some((previous, start)) = running {
            let end = self.budget.as_ref().map_or(start, |b| (b.meter)());
            self.charge(&previous, start, end);
        }
        for (owner, _, val) in loaded {
            if let Some(b) = self.boxes.get_mut(&owner) {
                b.sandbox.release(val);
            }
        }
        self.candidates = candidates;
        if let (Pass::Owner(owner), Some(seq)) = (pass, seq)
            && let Some(d) = self.deferred.get_mut(owner)
        {
            if paused {
                done.extend(applied.into_iter().map(|(_, id)| id));
                d.partial = Some((seq, done));
            } else {
                d.position = seq;
                d.partial = None;
            }
            self.deferral_changed.insert(owner.to_owned());
        }
        !paused
    }

    /// Where the last candidates of the last two owners to run on an event are (rules resting
    /// or deferred left out).
    fn last_owners(&self, candidates: &[RuleId]) -> LastOwners {
        let mut last = LastOwners::default();
        for (position, &id) in candidates.iter().enumerate().rev() {
            let Some(rule) = self.rules[id as usize].as_ref() else {
                continue;
            };
            if rule.resting(self.now) || !self.in_pass(id, Pass::Current) {
                continue;
            }
            match &last.last {
                None => last.last = Some((rule.owner.clone(), position)),
                Some((owner, _)) if *owner != rule.owner => {
                    last.other = Some(position);
                    break;
                }
                Some(_) => {}
            }
        }
        last
    }

    /// The event as a JavaScript value in `owner`'s sandbox, converted once per event.
    fn event_in_box(
        &mut self,
        owner: &str,
        event: &Event,
        loaded: &mut Vec<(String, u64, ValId)>,
    ) -> Option<ValId> {
        let b = self.boxes.get_mut(owner)?;
        let generation = b.sandbox.generation();
        if let Some((_, g, v)) = loaded.iter().find(|(o, _, _)| o == owner)
            && *g == generation
        {
            return Some(*v);
        }
        loaded.retain(|(o, _, _)| o != owner);
        let val = b.sandbox.load(&event.data).ok()?;
        loaded.push((owner.to_owned(), generation, val));
        Some(val)
    }

    fn sync_topics(&mut self, owner: &str) {
        let Some(b) = self.boxes.get_mut(owner) else {
            return;
        };
        for source in b.stale_topics.drain() {
            // Checked again here: who may read a source can change after it was marked.
            if !self.access.can_read(owner, &source) {
                continue;
            }
            if let Some(data) = self.topics.get(&source) {
                // A topic too large for the sandbox leaves the old value; the rule reading it
                // then reports its own error.
                let _ = b.sandbox.set_global_entry("_topic", &source, data);
            }
        }
    }

    fn apply(&mut self, id: RuleId, event: &Event, val: ValId, hops: u8, at: i64) {
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return;
        };
        let kind = rule.spec.kind;
        match kind {
            RuleKind::Match => self.apply_match(id, event, val, at),
            RuleKind::Threshold => self.apply_threshold(id, Some((event, val)), at),
            RuleKind::Count => self.apply_count(id, event, val, at),
            RuleKind::Absence => self.apply_absence(id, event, val, at),
            RuleKind::Script => self.apply_script(id, event, val, hops, at),
        }
    }

    /// Runs a compiled condition; a failure marks the rule and counts as "does not hold".
    fn call_bool(
        &mut self,
        id: RuleId,
        f: FnId,
        ev: Option<(&Event, ValId)>,
        now: i64,
    ) -> Option<bool> {
        let (owner, args_time) = {
            let rule = self.rules[id as usize].as_ref()?;
            (rule.owner.clone(), ev.map_or(now, |(e, _)| e.time))
        };
        self.out.evaluations += 1;
        let b = self.boxes.get_mut(&owner)?;
        let empty = json!({});
        let result = match ev {
            Some((e, v)) => b.sandbox.call_bool(
                f,
                &[
                    Arg::Val(v),
                    Arg::Val(v),
                    Arg::Str(&e.source),
                    Arg::Num(args_time as f64),
                ],
            ),
            None => b.sandbox.call_bool(
                f,
                &[
                    Arg::Json(&empty),
                    Arg::Json(&empty),
                    Arg::Str(""),
                    Arg::Num(args_time as f64),
                ],
            ),
        };
        self.record(id, result)
    }

    fn call_value(&mut self, id: RuleId, ev: Option<(&Event, ValId)>, now: i64) -> Option<f64> {
        let f = self.rules[id as usize].as_ref()?.value?;
        let owner = self.rules[id as usize].as_ref()?.owner.clone();
        self.out.evaluations += 1;
        let b = self.boxes.get_mut(&owner)?;
        let empty = json!({});
        let result = match ev {
            Some((e, v)) => b.sandbox.call_json(
                f,
                &[
                    Arg::Val(v),
                    Arg::Val(v),
                    Arg::Str(&e.source),
                    Arg::Num(e.time as f64),
                ],
            ),
            None => b.sandbox.call_json(
                f,
                &[
                    Arg::Json(&empty),
                    Arg::Json(&empty),
                    Arg::Str(""),
                    Arg::Num(now as f64),
                ],
            ),
        };
        self.record(id, result).as_ref().and_then(as_number)
    }

    /// Notes a JavaScript result against the rule's health. A failure puts the rule to rest
    /// (see [`backoff_ms`]): it is not run again before then, unless it is saved again.
    fn record<T>(&mut self, id: RuleId, result: Result<T, ExprError>) -> Option<T> {
        let now = self.now;
        let rule = self.rules[id as usize].as_mut()?;
        match result {
            Ok(v) => {
                rule.failures = 0;
                rule.retry_at = None;
                if rule.error.take().is_some() {
                    self.out
                        .status
                        .push((rule.owner.clone(), rule.spec.name.clone(), None));
                }
                Some(v)
            }
            Err(e) => {
                // Several failures in one run count once.
                if rule.retry_at.is_none_or(|t| t <= now) {
                    rule.failures = rule.failures.saturating_add(1);
                    rule.retry_at = Some(now.saturating_add(backoff_ms(rule.failures)));
                }
                let message = e.to_string();
                if rule.error.as_deref() != Some(&message) {
                    rule.error = Some(message.clone());
                    self.out.status.push((
                        rule.owner.clone(),
                        rule.spec.name.clone(),
                        Some(message.clone()),
                    ));
                }
                self.out.failures.push(RuleFailure {
                    owner: rule.owner.clone(),
                    rule: rule.spec.name.clone(),
                    message,
                });
                None
            }
        }
    }

    fn holds(&mut self, id: RuleId, ev: Option<(&Event, ValId)>, now: i64) -> Option<bool> {
        let rule = self.rules[id as usize].as_ref()?;
        if !rule.topics.iter().all(|t| self.topics.contains_key(t)) {
            return Some(false);
        }
        match rule.when {
            Some(f) => self.call_bool(id, f, ev, now),
            None => Some(true),
        }
    }

    fn apply_match(&mut self, id: RuleId, event: &Event, val: ValId, at: i64) {
        let Some(matched) = self.holds(id, Some((event, val)), at) else {
            return;
        };
        let rule = self.rules[id as usize]
            .as_ref()
            .expect("applied rules exist");
        if matched {
            let resolve_after = rule.spec.resolve_after;
            let Some(key) = self.key_of(id, Some(event)) else {
                return;
            };
            self.open_or_fold(id, &key, Some((event, val)), Status::Firing, at);
            if resolve_after.is_some() {
                self.set_state(id, &key, Some(KeyState::Match { last: at }));
                self.schedule(id, &key, at);
            }
        } else if let Some(f) = rule.resolve_when
            && rule.open > 0
        {
            let Some(key) = self.key_of(id, Some(event)) else {
                return;
            };
            if self.open.contains_key(&(id, key.clone()))
                && self.call_bool(id, f, Some((event, val)), at) == Some(true)
            {
                self.resolve(id, &key, Some((event, val)), at, ResolveReason::Condition);
                self.set_state(id, &key, None);
            }
        }
    }

    fn apply_threshold(&mut self, id: RuleId, ev: Option<(&Event, ValId)>, at: i64) {
        if let (Some((event, _)), Some(rule)) = (ev, self.rules[id as usize].as_ref())
            && !in_scope(&rule.scope, &event.data)
        {
            return;
        }
        let Some(holds) = self.holds(id, ev, at) else {
            return;
        };
        let Some(key) = self.key_of(id, ev.map(|(e, _)| e)) else {
            return;
        };
        let rule = self.rules[id as usize]
            .as_ref()
            .expect("applied rules exist");
        let hold_for = rule.spec.for_.map_or(0, |d| d.millis());
        let open = self.open.get(&(id, key.clone())).map(|o| o.status);
        match (holds, open) {
            (true, Some(_)) => self.fold(id, &key, ev, at),
            (true, None) => {
                let status = if hold_for == 0 {
                    Status::Firing
                } else {
                    Status::Pending
                };
                self.open_or_fold(id, &key, ev, status, at);
                if hold_for > 0 {
                    self.set_state(id, &key, Some(KeyState::Threshold { since: at }));
                    self.schedule(id, &key, at);
                }
            }
            (false, Some(Status::Pending)) => {
                self.discard(id, &key, at);
                self.set_state(id, &key, None);
            }
            (false, Some(_)) => {
                self.resolve(id, &key, ev, at, ResolveReason::Condition);
                self.set_state(id, &key, None);
            }
            (false, None) => {}
        }
    }

    fn apply_count(&mut self, id: RuleId, event: &Event, val: ValId, at: i64) {
        if self.holds(id, Some((event, val)), at) != Some(true) {
            return;
        }
        let Some(key) = self.key_of(id, Some(event)) else {
            return;
        };
        let rule = self.rules[id as usize]
            .as_ref()
            .expect("applied rules exist");
        let distinct = rule.spec.distinct.as_ref().map(|path| {
            lookup(&event.data, path).map_or_else(String::new, |v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        });
        let slot = (id, key.clone());
        let mut events = match self.states.remove(&slot) {
            Some(KeyState::Count { events }) => events,
            _ => VecDeque::new(),
        };
        events.push_back((at, distinct));
        self.states.insert(slot, KeyState::Count { events });
        self.dirty.insert((id, key.clone()));
        self.recount(id, &key, Some((event, val)), at);
    }

    /// Drops what slid out of a count window, then fires, folds or resolves by the count.
    fn recount(&mut self, id: RuleId, key: &str, ev: Option<(&Event, ValId)>, now: i64) {
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return;
        };
        let window = rule.spec.window.map_or(0, |d| d.millis());
        let limit = rule.spec.threshold.unwrap_or(0);
        let by_distinct = rule.spec.distinct.is_some();
        let slot = (id, key.to_owned());
        let Some(KeyState::Count { events }) = self.states.get_mut(&slot) else {
            return;
        };
        let before = events.len();
        while events
            .front()
            .is_some_and(|(t, _)| *t <= now.saturating_sub(window))
        {
            events.pop_front();
        }
        let pruned = events.len() != before;
        let count = if by_distinct {
            events
                .iter()
                .filter_map(|(_, v)| v.as_deref())
                .collect::<HashSet<_>>()
                .len() as u64
        } else {
            events.len() as u64
        };
        let empty = events.is_empty();
        if pruned {
            self.dirty.insert(slot.clone());
        }
        let open = self.open.contains_key(&slot);
        if count > limit {
            match ev {
                Some(_) if open => self.fold(id, key, ev, now),
                Some(_) => self.open_or_fold(id, key, ev, Status::Firing, now),
                None => {}
            }
        } else if open {
            self.resolve(id, key, ev, now, ResolveReason::Condition);
        }
        if empty {
            self.set_state(id, key, None);
        }
        self.schedule(id, key, now);
    }

    fn apply_absence(&mut self, id: RuleId, event: &Event, val: ValId, at: i64) {
        if self.holds(id, Some((event, val)), at) != Some(true) {
            return;
        }
        let Some(key) = self.key_of(id, Some(event)) else {
            return;
        };
        if self.open.contains_key(&(id, key.clone())) {
            self.resolve(id, &key, Some((event, val)), at, ResolveReason::Condition);
        }
        self.set_state(id, &key, Some(KeyState::Absence { last: at }));
        self.schedule(id, &key, at);
    }

    fn apply_script(&mut self, id: RuleId, event: &Event, val: ValId, hops: u8, at: i64) {
        if self.holds(id, Some((event, val)), at) != Some(true) {
            return;
        }
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return;
        };
        let Some(script) = rule.script else { return };
        let owner = rule.owner.clone();
        let state = match self.states.get(&(id, String::new())) {
            Some(KeyState::Script { state }) => state.clone(),
            _ => Value::Null,
        };
        self.out.evaluations += 1;
        let Some(b) = self.boxes.get_mut(&owner) else {
            return;
        };
        let result = b.sandbox.call_script(script, val, &state);
        let Some(outcome) = self.record(id, result) else {
            return;
        };
        if outcome.state != state {
            self.set_state(
                id,
                "",
                Some(KeyState::Script {
                    state: outcome.state,
                }),
            );
        }
        let mut emits = 0;
        for action in outcome.actions {
            match action {
                ScriptAction::Fire(spec) => {
                    let key = spec
                        .get("key")
                        .map(|k| match k {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        })
                        .unwrap_or_else(|| {
                            self.rules[id as usize]
                                .as_ref()
                                .map(|r| r.spec.name.clone())
                                .unwrap_or_default()
                        });
                    if let Some(alert) = self.open_alert(id, &key) {
                        let value = spec.get("value").and_then(as_number);
                        let summary = spec.get("summary").and_then(Value::as_str);
                        self.out.changes.push(Change::Fold {
                            alert,
                            at,
                            event_time: event.time,
                            value,
                            summary: summary.map(str::to_owned),
                        });
                    } else {
                        let mut content = self.content(id, &key, Some(event), None, at);
                        if let Some(s) = spec.get("summary").and_then(Value::as_str) {
                            content.summary = s.to_owned();
                        }
                        if let Some(s) = spec
                            .get("severity")
                            .and_then(Value::as_str)
                            .and_then(|s| s.parse().ok())
                        {
                            content.severity = s;
                        }
                        content.value = spec.get("value").and_then(as_number).or(content.value);
                        if let Some(Value::Object(labels)) = spec.get("labels") {
                            for (k, v) in labels {
                                let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                                content.labels.insert(k.clone(), v);
                            }
                        }
                        self.open_with(id, &key, content, Status::Firing, at, event.time);
                    }
                }
                ScriptAction::Resolve(key) => {
                    if self.open.contains_key(&(id, key.clone())) {
                        self.resolve(id, &key, Some((event, val)), at, ResolveReason::Script);
                    }
                }
                ScriptAction::Emit {
                    source,
                    event: data,
                } => {
                    let refusal = if hops + 1 >= MAX_HOPS {
                        Some(format!(
                            "ctx.emit chain deeper than {MAX_HOPS} rules: event dropped"
                        ))
                    } else if emits >= MAX_EMITS_PER_CALL {
                        Some(format!(
                            "more than {MAX_EMITS_PER_CALL} ctx.emit calls in one run: the rest dropped"
                        ))
                    } else if !data.is_object() {
                        Some("ctx.emit needs an object as the event".to_owned())
                    } else if let Err(m) = crate::event::validate_source_name(&source) {
                        Some(format!("ctx.emit: {m}"))
                    } else if !self.access.may_write(&owner, &source) {
                        Some(format!(
                            "ctx.emit: the source `{source}` belongs to another user"
                        ))
                    } else {
                        None
                    };
                    if let Some(message) = refusal {
                        self.record::<()>(id, Err(ExprError::Thrown(message)));
                        continue;
                    }
                    emits += 1;
                    self.out.emitted.push((
                        owner.clone(),
                        Event {
                            source,
                            time: at,
                            data,
                        },
                        hops + 1,
                    ));
                }
            }
        }
    }

    fn on_timer(&mut self, id: RuleId, key: &str, due: i64, now: i64) {
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return;
        };
        let kind = rule.spec.kind;
        let slot = (id, key.to_owned());
        match (kind, self.states.get(&slot).cloned()) {
            (RuleKind::Threshold, Some(KeyState::Threshold { .. })) => {
                if let Some(open) = self.open.get_mut(&slot)
                    && open.status == Status::Pending
                {
                    open.status = Status::Firing;
                    if let Some(alert) = self.open_alert(id, key) {
                        self.out.changes.push(Change::Fire { alert, at: due });
                    }
                    self.schedule_repeat(id, key, due, due);
                }
                self.set_state(id, key, None);
            }
            (RuleKind::Count, Some(KeyState::Count { .. })) => self.recount(id, key, None, due),
            (RuleKind::Absence, Some(KeyState::Absence { .. }))
                if !self.open.contains_key(&slot) =>
            {
                let content = self.content(id, key, None, None, due);
                self.open_with(id, key, content, Status::Firing, due, due);
            }
            (RuleKind::Match, Some(KeyState::Match { .. })) => {
                if self.open.contains_key(&slot) {
                    self.resolve(id, key, None, due, ResolveReason::Expired);
                }
                self.set_state(id, key, None);
            }
            _ => {}
        }
        let _ = now;
    }

    /// A threshold rule on `_topic` alone: checked on its own clock.
    fn on_tick(&mut self, id: RuleId, now: i64) {
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return;
        };
        if !rule.spec.is_active() {
            return;
        }
        let owner = rule.owner.clone();
        let every = rule.spec.every.map_or(DEFAULT_EVERY_MS, |d| d.millis());
        if !rule.resting(now) {
            self.sync_topics(&owner);
            self.apply_threshold(id, None, now);
        }
        self.ticks.insert((now.saturating_add(every), id));
    }

    /// Sets up a new or changed rule's clocks: ticks for `_topic` rules, expected keys.
    fn reschedule_rule(&mut self, id: RuleId, now: i64) {
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return;
        };
        if !rule.spec.is_active() {
            return;
        }
        if rule.topic_only {
            self.ticks.insert((now, id));
        }
        if rule.spec.kind == RuleKind::Absence {
            for key in rule.spec.keys.clone() {
                if !self.states.contains_key(&(id, key.clone())) {
                    self.set_state(id, &key, Some(KeyState::Absence { last: now }));
                }
            }
        }
        let keys: Vec<String> = self
            .states
            .keys()
            .filter(|(r, _)| *r == id)
            .map(|(_, k)| k.clone())
            .collect();
        for key in keys {
            self.schedule(id, &key, now);
        }
    }

    /// Sets the timer of (rule, key) from its state.
    fn schedule(&mut self, id: RuleId, key: &str, _now: i64) {
        let slot = (id, key.to_owned());
        if let Some(old) = self.deadlines.remove(&slot) {
            self.timers.remove(&(old, id, key.to_owned()));
        }
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return;
        };
        let spec = &rule.spec;
        let ms = |d: Option<crate::rule::Duration>| d.map_or(0, |d| d.millis());
        let due = match self.states.get(&slot) {
            Some(KeyState::Threshold { since }) => Some(since.saturating_add(ms(spec.for_))),
            Some(KeyState::Count { events }) => events
                .front()
                .map(|(t, _)| t.saturating_add(ms(spec.window))),
            Some(KeyState::Absence { last }) if !self.open.contains_key(&slot) => {
                Some(last.saturating_add(ms(spec.expect_every)))
            }
            Some(KeyState::Match { last }) if spec.resolve_after.is_some() => {
                Some(last.saturating_add(ms(spec.resolve_after)))
            }
            _ => None,
        };
        if let Some(due) = due {
            self.timers.insert((due, id, key.to_owned()));
            self.deadlines.insert(slot, due);
        }
    }

    fn set_state(&mut self, id: RuleId, key: &str, state: Option<KeyState>) {
        let slot = (id, key.to_owned());
        let changed = match state {
            Some(s) => self.states.insert(slot.clone(), s.clone()) != Some(s),
            None => {
                if let Some(old) = self.deadlines.remove(&slot) {
                    self.timers.remove(&(old, id, key.to_owned()));
                }
                self.states.remove(&slot).is_some()
            }
        };
        if changed {
            self.dirty.insert(slot);
        }
    }

    /// The alert key for an event: the `key` template, the `group_by` values, or the rule name.
    fn key_of(&mut self, id: RuleId, event: Option<&Event>) -> Option<String> {
        let rule = self.rules[id as usize].as_ref()?;
        if rule.templates.has("key") {
            let ctx = self.context(id, "", event, None, event.map(|e| e.time));
            let rule = self.rules[id as usize].as_ref()?;
            let rendered = rule.templates.render("key", &ctx);
            return self
                .record(id, rendered.map_err(ExprError::Thrown))
                .flatten();
        }
        if !rule.spec.group_by.is_empty() {
            let data = event.map(|e| &e.data);
            let parts: Vec<String> = rule
                .spec
                .group_by
                .iter()
                .map(|path| {
                    data.and_then(|d| lookup(d, path))
                        .map_or_else(String::new, plain)
                })
                .collect();
            return Some(parts.join("/"));
        }
        Some(rule.spec.name.clone())
    }

    /// What a rule's templates see; `now` (epoch ms) is the time they are rendered at, which
    /// the `ago` filter counts from.
    fn context(
        &self,
        id: RuleId,
        key: &str,
        event: Option<&Event>,
        value: Option<f64>,
        now: Option<i64>,
    ) -> minijinja::Value {
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return minijinja::Value::UNDEFINED;
        };
        let spec = &rule.spec;
        let event_value = event.map_or(Value::Null, |e| e.data.clone());
        minijinja::context! {
            event => crate::template::to_value(&event_value),
            e => crate::template::to_value(&event_value),
            source => event.map(|e| e.source.clone()),
            time => event.map(|e| e.time),
            now => now,
            key => key,
            // A whole number reads as one (`130 bpm`, not `130.0 bpm`).
            value => value.map(|v| if v.fract() == 0.0 && v.abs() < 1e15 {
                minijinja::Value::from(v as i64)
            } else {
                minijinja::Value::from(v)
            }),
            params => crate::template::to_value(spec.params.as_ref().unwrap_or(&Value::Null)),
            rule => minijinja::context! {
                name => &spec.name,
                description => &spec.description,
                severity => spec.severity.as_str(),
                owner => &rule.owner,
            },
        }
    }

    /// Renders what a new alert says.
    fn content(
        &mut self,
        id: RuleId,
        key: &str,
        event: Option<&Event>,
        value: Option<f64>,
        at: i64,
    ) -> Content {
        let ctx = self.context(id, key, event, value, Some(at));
        let Some(rule) = self.rules[id as usize].as_ref() else {
            return Content::default();
        };
        let spec = rule.spec.clone();
        let mut errors = Vec::new();
        let mut render = |name: &str| -> Option<String> {
            match rule.templates.render(name, &ctx) {
                Ok(v) => v,
                Err(e) => {
                    errors.push(e);
                    None
                }
            }
        };
        let summary = render("summary").unwrap_or_else(|| {
            let base = spec
                .description
                .clone()
                .unwrap_or_else(|| spec.name.clone());
            if key == spec.name {
                base
            } else {
                format!("{base}: {key}")
            }
        });
        let body = render("body").unwrap_or_default();
        let mut labels: std::collections::BTreeMap<String, String> =
            std::collections::BTreeMap::new();
        if let Some(e) = event {
            for path in &spec.group_by {
                if let Some(v) = lookup(&e.data, path) {
                    labels.insert(path.clone(), plain(v));
                }
            }
        }
        for name in spec.labels.keys() {
            if let Some(v) = render(&format!("labels.{name}")) {
                labels.insert(name.clone(), v);
            }
        }
        let mut links = std::collections::BTreeMap::new();
        for name in spec.links.keys() {
            if let Some(v) = render(&format!("links.{name}")) {
                links.insert(name.clone(), v);
            }
        }
        let run = event.and_then(|e| e.data.get("run")).map(plain);
        let content = Content {
            severity: spec.severity,
            summary,
            body,
            value,
            labels,
            links,
            // An alert opened by a timer (a stopped heartbeat) has no event: its source is
            // the rule's, when that names one source rather than a pattern.
            source: event
                .map(|e| e.source.clone())
                .or_else(|| {
                    spec.source
                        .clone()
                        .filter(|s| !s.contains(['*', '?', '[', '{']))
                })
                .unwrap_or_default(),
            run,
        };
        for e in errors {
            self.record::<()>(id, Err(ExprError::Thrown(e)));
        }
        content
    }

    fn open_or_fold(
        &mut self,
        id: RuleId,
        key: &str,
        ev: Option<(&Event, ValId)>,
        status: Status,
        at: i64,
    ) {
        if self.open.contains_key(&(id, key.to_owned())) {
            self.fold(id, key, ev, at);
            return;
        }
        let value = self.call_value(id, ev, at);
        let event = ev.map(|(e, _)| e);
        let content = self.content(id, key, event, value, at);
        self.open_with(id, key, content, status, at, event.map_or(at, |e| e.time));
    }

    fn open_with(
        &mut self,
        id: RuleId,
        key: &str,
        content: Content,
        status: Status,
        at: i64,
        event_time: i64,
    ) {
        let alert_id = (self.ids)();
        let Some(rule) = self.rules[id as usize].as_mut() else {
            return;
        };
        rule.open += 1;
        let alert = rule.alert(&alert_id, key);
        let open = Open {
            status,
            id: alert_id,
            acked: false,
            repeat_at: None,
        };
        self.open.insert((id, key.to_owned()), open);
        if status == Status::Firing {
            self.schedule_repeat(id, key, at, at);
        }
        self.out.changes.push(Change::Open {
            alert,
            status,
            at,
            event_time,
            content,
        });
    }

    fn fold(&mut self, id: RuleId, key: &str, ev: Option<(&Event, ValId)>, at: i64) {
        let value = self.call_value(id, ev, at);
        let Some(alert) = self.open_alert(id, key) else {
            return;
        };
        // The summary follows the events folded in (a pulse of 140, not the 130 it opened
        // with). A check on a timer has no event to say anything new about.
        let summary = match ev {
            Some((event, _)) => self.render_for(id, "summary", key, Some(event), value, at),
            None => None,
        };
        self.out.changes.push(Change::Fold {
            alert,
            at,
            event_time: ev.map_or(at, |(e, _)| e.time),
            value,
            summary,
        });
    }

    /// Renders the template `name` of a rule for one alert; `None` if the rule has none or it
    /// failed (the failure marks the rule, as when an alert opens).
    fn render_for(
        &mut self,
        id: RuleId,
        name: &str,
        key: &str,
        event: Option<&Event>,
        value: Option<f64>,
        at: i64,
    ) -> Option<String> {
        if !self.rules[id as usize].as_ref()?.templates.has(name) {
            return None;
        }
        let ctx = self.context(id, key, event, value, Some(at));
        let rendered = self.rules[id as usize]
            .as_ref()?
            .templates
            .render(name, &ctx);
        match rendered {
            Ok(text) => text,
            Err(e) => {
                self.record::<()>(id, Err(ExprError::Thrown(e)));
                None
            }
        }
    }

    /// The rule itself resolves an alert (its condition, a quiet period, its script): the
    /// alert then says the rule's `resolve_summary`, rendered with the resolving event.
    fn resolve(
        &mut self,
        id: RuleId,
        key: &str,
        ev: Option<(&Event, ValId)>,
        at: i64,
        reason: ResolveReason,
    ) {
        let has = self.rules[id as usize]
            .as_ref()
            .is_some_and(|r| r.templates.has("resolve_summary"));
        let summary = if has && self.open.contains_key(&(id, key.to_owned())) {
            let value = ev.and_then(|_| self.call_value(id, ev, at));
            self.render_for(id, "resolve_summary", key, ev.map(|(e, _)| e), value, at)
        } else {
            None
        };
        self.close_saying(id, key, at, reason, summary);
    }

    fn close(&mut self, id: RuleId, key: &str, at: i64, reason: ResolveReason) {
        self.close_saying(id, key, at, reason, None);
    }

    fn close_saying(
        &mut self,
        id: RuleId,
        key: &str,
        at: i64,
        reason: ResolveReason,
        summary: Option<String>,
    ) {
        let Some(open) = self.open.remove(&(id, key.to_owned())) else {
            return;
        };
        if let Some(due) = open.repeat_at {
            self.repeats.remove(&(due, id, key.to_owned()));
        }
        let Some(rule) = self.rules[id as usize].as_mut() else {
            return;
        };
        rule.open = rule.open.saturating_sub(1);
        let alert = rule.alert(&open.id, key);
        // A pending alert that never fired leaves no trace, unless a person resolved it.
        let change = if open.status == Status::Pending && reason != ResolveReason::Manual {
            Change::Discard { alert, at }
        } else {
            Change::Resolve {
                alert,
                at,
                reason,
                summary,
            }
        };
        self.out.changes.push(change);
    }

    /// The identity of the open alert of (rule, key).
    fn open_alert(&self, id: RuleId, key: &str) -> Option<AlertKey> {
        let open = self.open.get(&(id, key.to_owned()))?;
        Some(self.rules[id as usize].as_ref()?.alert(&open.id, key))
    }

    fn discard(&mut self, id: RuleId, key: &str, at: i64) {
        self.close(id, key, at, ResolveReason::Condition);
    }
}

/// What a rule would do with some events: the result of a dry run.
#[derive(Debug, Default, serde::Serialize)]
pub struct DryRun {
    pub changes: Vec<Change>,
    pub emitted: Vec<EmittedEvent>,
    pub errors: Vec<String>,
}

/// An event a script would emit.
#[derive(Debug, serde::Serialize)]
pub struct EmittedEvent {
    pub source: String,
    pub event: Value,
}

/// Runs `rules` of `owner` over `events` from scratch, then lets `advance_ms` pass, without
/// storing anything. Events are taken at their own time (never earlier than the one before),
/// so a `for` or a window plays out as it would have.
pub fn dry_run(
    limits: Limits,
    owner: &str,
    rules: Vec<RuleSpec>,
    events: &[Event],
    start: i64,
    advance_ms: i64,
) -> Result<DryRun, RuleError> {
    let mut evaluator = Evaluator::new(limits);
    // The events are the caller's own, so the rule may read all of them.
    evaluator.access.set_admin(owner, true);
    for rule in rules {
        evaluator.upsert(owner, rule, start)?;
    }
    let mut result = DryRun::default();
    let mut t = start;
    let mut queue: VecDeque<(Event, u8)> = events.iter().cloned().map(|e| (e, 0)).collect();
    while let Some((event, hops)) = queue.pop_front() {
        t = t.max(event.time);
        evaluator.on_event(&event, hops, t);
        let out = evaluator.drain();
        for (_, e, h) in out.emitted {
            result.emitted.push(EmittedEvent {
                source: e.source.clone(),
                event: e.data.clone(),
            });
            queue.push_back((e, h));
        }
        result.changes.extend(out.changes);
        result
            .errors
            .extend(out.failures.into_iter().map(|f| f.message));
    }
    evaluator.advance(t + advance_ms.max(0));
    let out = evaluator.drain();
    result.changes.extend(out.changes);
    result
        .errors
        .extend(out.failures.into_iter().map(|f| f.message));
    result.errors.dedup();
    Ok(result)
}

/// Where a rule goes in the index: under its conditions' equalities, when every condition
/// that can open or close one of its alerts from an event has some. (A threshold's `when`
/// equalities are its scope, see [`Compiled::scope`], so thresholds file like the rest.)
fn filing(spec: &RuleSpec) -> Filing {
    let Some(when) = &spec.when else {
        return Filing::Always;
    };
    // One equality per condition is enough to file under: every match must meet it.
    let Some(first) = required_equalities(when).and_then(|e| e.into_iter().next()) else {
        return Filing::Always;
    };
    let mut eqs = vec![first];
    if let Some(resolve) = &spec.resolve_when {
        match required_equalities(resolve).and_then(|e| e.into_iter().next()) {
            Some(more) => eqs.push(more),
            None => return Filing::Always,
        }
    }
    Filing::Under(eqs)
}

/// Whether an event meets a threshold's scope. A field that is present but not a string is left
/// to the JavaScript to judge (`==` may still equate it), so only a clear mismatch excludes.
fn in_scope(scope: &[crate::index::Equality], data: &Value) -> bool {
    use crate::index::Resolved;
    scope
        .iter()
        .all(|eq| match crate::index::resolve(data, &eq.path) {
            Resolved::Absent => false,
            Resolved::Value(Value::String(s)) => *s == eq.value,
            Resolved::Value(_) | Resolved::Unknown => true,
        })
}

/// A JSON value as text for keys and labels: strings without quotes.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn js_error(field: &str, e: ExprError) -> RuleError {
    match e {
        ExprError::Syntax {
            message,
            line,
            column,
        } => RuleError {
            field: Some(field.to_owned()),
            message: format!("JavaScript syntax error at line {line}, column {column}: {message}"),
            line: Some(line),
            column: Some(column),
            failures: Vec::new(),
        },
        other => RuleError::new(Some(field), other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MIN: i64 = 60_000;

    fn rule(doc: Value) -> RuleSpec {
        match crate::rule::parse_doc(doc).expect("valid rule") {
            crate::rule::RuleDoc::Rule(r) => *r,
            other => panic!("not a rule: {other:?}"),
        }
    }

    fn event(source: &str, data: Value) -> Event {
        Event {
            source: source.into(),
            time: 0,
            data,
        }
    }

    fn with(rules: &[Value], now: i64) -> Evaluator {
        let mut ev = Evaluator::new(Limits::default());
        for r in rules {
            ev.upsert("ann", rule(r.clone()), now).expect("rule loads");
        }
        ev.drain();
        ev
    }

    /// The changes as (kind, key) pairs.
    fn kinds(out: &Outcome) -> Vec<(&'static str, String)> {
        out.changes
            .iter()
            .map(|c| {
                let kind = match c {
                    Change::Open {
                        status: Status::Pending,
                        ..
                    } => "pending",
                    Change::Open { .. } => "open",
                    Change::Fire { .. } => "fire",
                    Change::Fold { .. } => "fold",
                    Change::Repeat { .. } => "repeat",
                    Change::Resolve { .. } => "resolve",
                    Change::Discard { .. } => "discard",
                };
                (kind, c.alert().key.clone())
            })
            .collect()
    }

    #[test]
    fn threshold_scope_and_for() {
        let mut ev = with(
            &[json!({"name": "disk", "kind": "threshold", "source": "m",
            "when": "event.kind == 'disk' && event.pct > 90", "for": "5m"})],
            0,
        );
        ev.on_event(&event("m", json!({"kind": "disk", "pct": 95})), 0, 0);
        assert_eq!(kinds(&ev.drain()), vec![("pending", "disk".into())]);
        // Outside the scope: neither resolves nor folds.
        ev.on_event(&event("m", json!({"kind": "cpu", "pct": 10})), 0, MIN);
        assert!(ev.drain().changes.is_empty());
        assert_eq!(ev.next_deadline(), Some(5 * MIN));
        ev.advance(5 * MIN);
        let out = ev.drain();
        assert!(
            matches!(out.changes[..], [Change::Fire { at, .. }] if at == 5 * MIN),
            "{:?}",
            out.changes
        );
        ev.on_event(&event("m", json!({"kind": "disk", "pct": 50})), 0, 6 * MIN);
        assert_eq!(kinds(&ev.drain()), vec![("resolve", "disk".into())]);
    }

    /// Issue 7, item 3: a rule that pollutes prototypes and globals, and a rule of the same
    /// owner whose result would change if it saw them.
    #[test]
    fn a_polluting_rule_does_not_change_another_rule_of_its_owner() {
        let mut ev = with(
            &[
                json!({"name": "a-polluter", "source": "s",
                    "when": "Object.prototype.admin = true; Array.prototype.includes = function () { return true }; \
                             seen = 1; globalThis.flag = true; String.prototype.startsWith = function () { return true }; true"}),
                json!({"name": "b-reader", "source": "s",
                    "when": "({}).admin || ['x'].includes(event.role) || typeof seen !== 'undefined' || \
                             globalThis.flag === true || event.role.startsWith('adm') || event.admin === true"}),
                json!({"name": "c-script", "kind": "script", "source": "s",
                    "script": "function handle(event, ctx) { seen = (typeof seen === 'number' ? seen : 0) + 10; \
                               ctx.state.n = (ctx.state.n || 0) + 1; ctx.state.seen = seen; \
                               if (({}).admin) ctx.fire({key: 'polluted'}) }"}),
            ],
            0,
        );
        for t in 0..3 {
            ev.on_event(&event("s", json!({"role": "user"})), 0, t);
        }
        let out = ev.drain();
        assert!(out.failures.is_empty(), "{:?}", out.failures);
        // Only the polluter's own condition held; the reader never did; the script kept its
        // own stray variable and state, and saw no polluted prototype.
        assert_eq!(
            kinds(&out),
            vec![
                ("open", "a-polluter".into()),
                ("fold", "a-polluter".into()),
                ("fold", "a-polluter".into())
            ]
        );
        let states = ev.take_dirty();
        let script = states
            .iter()
            .find(|s| s.rule == "c-script")
            .and_then(|s| s.state.clone());
        assert_eq!(script, Some(json!({"state": {"n": 3, "seen": 30}})));
    }

    /// Issue 7, item 2: a rule in `error` is not run again until its back-off has passed (in
    /// event time) or it is saved again.
    #[test]
    fn a_failing_rule_rests_with_exponential_backoff() {
        assert_eq!(
            (1..=10).map(backoff_ms).collect::<Vec<_>>(),
            vec![
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 300_000
            ]
        );
        let throws = json!({"name": "throws", "source": "s", "when": "event.a.b > 1"});
        let mut ev = with(
            &[
                throws.clone(),
                json!({"name": "fine", "source": "s", "when": "true"}),
            ],
            0,
        );
        // (time, whether `throws` runs at it)
        let plan = [
            (0, true),
            (10, false),
            (999, false),
            (1_000, true),
            (2_999, false),
            (3_000, true),
            (6_999, false),
            (7_000, true),
        ];
        for (t, runs) in plan {
            ev.on_event(&event("s", json!({"v": 1})), 0, t);
            let out = ev.drain();
            assert_eq!(out.evaluations, 1 + u64::from(runs), "at {t}");
            assert_eq!(out.failures.len(), usize::from(runs), "at {t}");
            // The error stays visible while it rests: it is reported once, when it changes.
            assert_eq!(
                out.status.len(),
                usize::from(t == 0),
                "at {t}: {:?}",
                out.status
            );
            assert!(ev.rule_error("ann", "throws").is_some());
        }
        assert_eq!(ev.retry_at("ann", "throws"), Some(15_000));
        // Timers and ticks do not run it either; saving it again does at once.
        ev.upsert("ann", rule(throws), 7_500).expect("saved");
        ev.on_event(&event("s", json!({"v": 1})), 0, 7_600);
        assert_eq!(ev.drain().failures.len(), 1);
        assert_eq!(ev.retry_at("ann", "throws"), Some(8_600));
        // Once it has rested, an event it handles well makes it healthy again.
        ev.on_event(&event("s", json!({"a": {"b": 2}})), 0, 8_600);
        let out = ev.drain();
        assert!(out.failures.is_empty());
        assert_eq!(out.status, vec![("ann".into(), "throws".into(), None)]);
        assert_eq!(ev.retry_at("ann", "throws"), None);
        assert_eq!(
            kinds(&out),
            vec![("open", "throws".into()), ("fold", "fine".into())]
        );
    }

    /// Issue 7, item 2: an owner whose share of engine time is used up is deferred; their
    /// rules catch up later, in order, each event exactly once, while others go on.
    #[test]
    fn an_owner_over_budget_is_deferred_and_caught_up_exactly_once() {
        let mut ev = Evaluator::new(Limits::default());
        for i in 0..5 {
            ev.upsert("hog", rule(json!({"name": format!("h{i}"), "source": "s", "when": "true", "group_by": ["i"]})), 0)
                .expect("rule");
        }
        ev.upsert(
            "ann",
            rule(json!({"name": "a", "source": "s", "when": "true", "group_by": ["i"]})),
            0,
        )
        .expect("rule");
        // Every reading of the meter is 1 ms after the one before, so each rule costs 1 ms;
        // `waited` adds idle time.
        let waited = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let ticks = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let (w, t) = (waited.clone(), ticks.clone());
        // Newer events wait in the log all along (the hog has to make way).
        ev.set_owner_budget(
            OwnerBudget {
                per_second: std::time::Duration::from_millis(10),
                burst: std::time::Duration::from_millis(3),
            },
            Box::new(move || {
                t.set(t.get() + 1);
                t.get() * 1_000_000 + w.get()
            }),
            Box::new(|_| true),
        );
        let opened = |out: &Outcome| -> Vec<String> {
            out.changes
                .iter()
                .filter(|c| matches!(c, Change::Open { .. }))
                .map(|c| format!("{}:{}", c.alert().rule, c.alert().key))
                .collect()
        };
        let e = |i: i64| event("s", json!({"i": i}));
        ev.on_logged_event(1, &e(1), 0, 10);
        // The hog had 3 ms: four rules ran (the fourth took it below zero), the fifth did not.
        assert_eq!(opened(&ev.drain()), ["h0:1", "h1:1", "h2:1", "h3:1", "a:1"]);
        assert!(ev.is_deferred("hog") && !ev.is_deferred("ann"));
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            ev.take_deferrals(),
            vec![(
                "hog".to_string(),
                Some(Deferred {
                    position: 0,
                    partial: Some((1, names(&["h0", "h1", "h2", "h3"])))
                })
            )]
        );
        ev.on_logged_event(2, &e(2), 0, 20);
        ev.on_logged_event(3, &e(3), 0, 30);
        assert_eq!(opened(&ev.drain()), ["a:2", "a:3"]);
        // Still out of time: nothing runs.
        assert_eq!(ev.resume("hog", 1, &e(1), 0, 10), Resumed::Paused);
        assert!(ev.drain().changes.is_empty());
        let mut order = Vec::new();
        for (seq, i) in [(1, 1), (2, 2), (3, 3)] {
            loop {
                waited.set(waited.get() + 1_000_000_000);
                ev.begin_turn();
                let r = ev.resume("hog", seq, &e(i), 0, 10 * i);
                order.extend(opened(&ev.drain()));
                if r == Resumed::Done {
                    break;
                }
            }
        }
        assert_eq!(
            order,
            [
                "h4:1", "h0:2", "h1:2", "h2:2", "h3:2", "h4:2", "h0:3", "h1:3", "h2:3", "h3:3",
                "h4:3"
            ]
        );
        assert_eq!(
            ev.resume("hog", 2, &e(2), 0, 20),
            Resumed::Done,
            "already evaluated"
        );
        assert_eq!(ev.deferred_owners(), vec![("hog".to_string(), 3)]);
        ev.undefer("hog");
        assert_eq!(ev.take_deferrals().last(), Some(&("hog".to_string(), None)));
        assert_eq!(ev.resume("hog", 4, &e(4), 0, 40), Resumed::NotDeferred);
        // A restart takes the deferral back, partial event included.
        let mut again = Evaluator::new(Limits::default());
        for i in 0..5 {
            again.upsert("hog", rule(json!({"name": format!("h{i}"), "source": "s", "when": "true", "group_by": ["i"]})), 0)
                .expect("rule");
        }
        again.drain();
        again.restore_deferral(
            "hog",
            &Deferred {
                position: 0,
                partial: Some((1, names(&["h0", "h3"]))),
            },
        );
        assert_eq!(again.resume("hog", 1, &e(1), 0, 10), Resumed::Done);
        assert_eq!(opened(&again.drain()), ["h1:1", "h2:1", "h4:1"]);
    }

    /// The share is work-conserving: an owner out of time makes way only for someone waiting.
    #[test]
    fn an_owner_over_budget_keeps_the_engine_while_nobody_else_waits() {
        let mut ev = Evaluator::new(Limits::default());
        for i in 0..5 {
            ev.upsert("hog", rule(json!({"name": format!("h{i}"), "source": "s", "when": "true", "group_by": ["i"]})), 0)
                .expect("rule");
        }
        // Each reading of the meter is 1 ms after the one before; `waiting` is the backlog.
        let ticks = std::rc::Rc::new(std::cell::Cell::new(0u64));
        let waiting = std::rc::Rc::new(std::cell::Cell::new(false));
        let (t, w) = (ticks.clone(), waiting.clone());
        ev.set_owner_budget(
            OwnerBudget {
                per_second: std::time::Duration::from_millis(10),
                burst: std::time::Duration::from_millis(3),
            },
            Box::new(move || {
                t.set(t.get() + 1);
                t.get() * 1_000_000
            }),
            Box::new(move |_| w.get()),
        );
        let e = |i: i64| event("s", json!({"i": i}));
        let opened = |ev: &mut Evaluator| {
            ev.drain()
                .changes
                .iter()
                .filter(|c| matches!(c, Change::Open { .. }))
                .count()
        };
        // Alone, with events waiting: nobody to make way for.
        waiting.set(true);
        for seq in 1..=3 {
            ev.on_logged_event(seq, &e(seq), 0, seq * 10);
        }
        assert_eq!(opened(&mut ev), 15);
        assert!(!ev.is_deferred("hog"));
        // Another owner has a rule on another source, and nothing waits: still no deferral.
        ev.upsert(
            "ann",
            rule(json!({"name": "a", "source": "other", "when": "true"})),
            0,
        )
        .expect("rule");
        waiting.set(false);
        ev.on_logged_event(4, &e(4), 0, 40);
        assert_eq!(opened(&mut ev), 5);
        assert!(!ev.is_deferred("hog"));
        // Events wait behind this one: the hog, out of time, makes way.
        waiting.set(true);
        ev.on_logged_event(5, &e(5), 0, 50);
        assert_eq!(opened(&mut ev), 0, "out of time since event 4");
        assert!(ev.is_deferred("hog"));
        ev.on_logged_event(6, &e(6), 0, 60);
        assert_eq!(opened(&mut ev), 0);
        // Out of time but nothing new in the log: the hog catches up all the same, in order.
        assert!(!ev.may_catch_up("hog"));
        waiting.set(false);
        assert!(ev.may_catch_up("hog"));
        ev.begin_turn();
        assert_eq!(ev.resume("hog", 5, &e(5), 0, 50), Resumed::Done);
        assert_eq!(ev.resume("hog", 6, &e(6), 0, 60), Resumed::Done);
        assert_eq!(opened(&mut ev), 10);
        // With events waiting again, a hog out of time pauses.
        ev.on_logged_event(7, &e(7), 0, 70);
        assert_eq!(opened(&mut ev), 0, "still deferred: skips the current pass");
        waiting.set(true);
        assert_eq!(ev.resume("hog", 7, &e(7), 0, 70), Resumed::Paused);
    }

    #[test]
    fn count_with_distinct_values_slides_out_of_its_window() {
        let mut ev = with(
            &[json!({"name": "c", "kind": "count", "when": "event.fail",
            "group_by": ["run"], "distinct": "block", "threshold": 2, "window": "10m"})],
            0,
        );
        for (i, block) in ["a", "a", "b", "c"].iter().enumerate() {
            ev.on_event(
                &event("s", json!({"fail": true, "run": "r1", "block": block})),
                0,
                i as i64 * MIN,
            );
        }
        // Two events of block a count once: the third distinct block (at 3 min) fires.
        assert_eq!(kinds(&ev.drain()), vec![("open", "r1".into())]);
        ev.advance(11 * MIN);
        // The a's of 0 and 1 min slide out at 10 and 11 min: only b and c remain, two values.
        assert_eq!(kinds(&ev.drain()), vec![("resolve", "r1".into())]);
    }

    #[test]
    fn absence_of_expected_keys_fires_without_any_event() {
        let mut ev = with(
            &[
                json!({"name": "hb", "kind": "absence", "expect_every": "1m",
            "group_by": ["host"], "keys": ["db1"]}),
            ],
            0,
        );
        ev.advance(MIN - 1);
        assert!(ev.drain().changes.is_empty());
        ev.advance(MIN);
        assert_eq!(kinds(&ev.drain()), vec![("open", "db1".into())]);
        ev.on_event(&event("s", json!({"host": "db1"})), 0, 2 * MIN);
        assert_eq!(kinds(&ev.drain()), vec![("resolve", "db1".into())]);
    }

    #[test]
    fn match_folds_and_resolves_after_quiet() {
        let mut ev = with(
            &[json!({"name": "m", "when": "event.bad", "resolve_after": "10m"})],
            0,
        );
        ev.on_event(&event("s", json!({"bad": true})), 0, 0);
        ev.on_event(&event("s", json!({"bad": true})), 0, 5 * MIN);
        assert_eq!(
            kinds(&ev.drain()),
            vec![("open", "m".into()), ("fold", "m".into())]
        );
        ev.advance(14 * MIN);
        assert!(
            ev.drain().changes.is_empty(),
            "10 minutes from the last match, not the first"
        );
        ev.advance(15 * MIN);
        assert_eq!(kinds(&ev.drain()), vec![("resolve", "m".into())]);
    }

    #[test]
    fn the_summary_follows_folded_events_and_resolving_says_resolve_summary() {
        let mut ev = with(
            &[
                json!({"name": "pulse", "kind": "threshold", "when": "event.bpm > 120",
                "value": "event.bpm", "summary": "pulse {{ value }} bpm",
                "resolve_summary": "pulse back to {{ value }} bpm"}),
            ],
            0,
        );
        ev.on_event(&event("s", json!({"bpm": 130})), 0, 0);
        ev.on_event(&event("s", json!({"bpm": 140})), 0, 1);
        ev.on_event(&event("s", json!({"bpm": 80})), 0, 2);
        let changes = ev.drain().changes;
        let said: Vec<Option<&str>> = changes
            .iter()
            .map(|c| match c {
                Change::Open { content, .. } => Some(content.summary.as_str()),
                Change::Fold { summary, .. } | Change::Resolve { summary, .. } => {
                    summary.as_deref()
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            said,
            [
                Some("pulse 130 bpm"),
                Some("pulse 140 bpm"),
                Some("pulse back to 80 bpm")
            ]
        );
        // Resolved by hand, the alert keeps its last summary: the rule did not say it is over.
        ev.on_event(&event("s", json!({"bpm": 150})), 0, 3);
        let open = ev.drain().changes;
        let alert = open[0].alert().clone();
        assert!(ev.resolve_by_hand(&alert, 4));
        assert!(matches!(
            &ev.drain().changes[..],
            [Change::Resolve { summary: None, .. }]
        ));
    }

    #[test]
    fn disabling_a_rule_resolves_its_alerts() {
        let doc = json!({"name": "m", "when": "true", "group_by": ["k"]});
        let mut ev = with(std::slice::from_ref(&doc), 0);
        ev.on_event(&event("s", json!({"k": "a"})), 0, 0);
        ev.on_event(&event("s", json!({"k": "b"})), 0, 0);
        ev.drain();
        let mut disabled = doc;
        disabled["disabled"] = json!(true);
        ev.upsert("ann", rule(disabled), MIN).expect("updates");
        let out = ev.drain();
        assert_eq!(out.changes.len(), 2);
        assert!(out.changes.iter().all(|c| matches!(
            c,
            Change::Resolve {
                reason: ResolveReason::RuleDisabled,
                ..
            }
        )));
        ev.on_event(&event("s", json!({"k": "a"})), 0, 2 * MIN);
        assert!(
            ev.drain().changes.is_empty(),
            "a disabled rule is not evaluated"
        );
    }

    #[test]
    fn state_survives_through_take_dirty_and_restore() {
        let doc = json!({"name": "t", "kind": "threshold", "when": "event.v > 1", "for": "5m"});
        let mut ev = with(std::slice::from_ref(&doc), 0);
        ev.on_event(&event("s", json!({"v": 2})), 0, MIN);
        ev.drain();
        let saved = ev.take_dirty();
        assert_eq!(saved.len(), 1);
        let mut restarted = with(&[doc], 2 * MIN);
        restarted.restore_open(
            &AlertKey {
                id: "a1".into(),
                owner: "ann".into(),
                rule: "t".into(),
                key: "t".into(),
            },
            Status::Pending,
            None,
            false,
            2 * MIN,
        );
        for s in saved {
            restarted.restore_state(
                &s.owner,
                &s.rule,
                &s.key,
                s.state.as_ref().expect("state"),
                2 * MIN,
            );
        }
        restarted.advance(6 * MIN);
        assert!(
            matches!(restarted.drain().changes[..], [Change::Fire { at, .. }] if at == 6 * MIN)
        );
    }

    #[test]
    fn only_indexed_candidates_are_evaluated() {
        let rules: Vec<Value> = (0..100)
            .map(|i| json!({"name": format!("r{i}"), "source": "m", "when": format!("event.host == 'h{i}' && event.cpu > 90")}))
            .collect();
        let mut ev = with(&rules, 0);
        ev.on_event(&event("m", json!({"host": "h7", "cpu": 95})), 0, 0);
        let out = ev.drain();
        assert_eq!(
            out.evaluations, 1,
            "one rule's condition ran, not a hundred"
        );
        assert_eq!(kinds(&out), vec![("open", "r7".into())]);
    }

    #[test]
    fn sources_private_to_others_are_not_seen() {
        let mut ev = with(&[json!({"name": "all", "when": "true"})], 0);
        ev.access.set_source("bobs", "bob", false);
        ev.on_event(&event("bobs", json!({})), 0, 0);
        assert!(ev.drain().changes.is_empty());
        ev.access.set_source("shared", "bob", true);
        ev.on_event(&event("shared", json!({})), 0, 0);
        assert_eq!(ev.drain().changes.len(), 1);
    }

    // Regressions found in review.
    #[test]
    fn a_multi_statement_condition_is_not_indexed_by_its_first_line() {
        // The condition's value is its LAST statement (`event.env == 'prod'`), but the index
        // files the rule under type == 'deploy' from the first line.
        let mut ev = with(
            &[
                json!({"name": "indexed", "when": "event.type == 'deploy' && event.seen\nevent.env == 'prod'"}),
                json!({"name": "unindexed", "when": "event.type == 'deploy' && event.seen\nevent.env == 'prod' || false"}),
            ],
            0,
        );
        ev.on_event(
            &event("s", json!({"type": "other", "seen": true, "env": "prod"})),
            0,
            0,
        );
        let got = kinds(&ev.drain());
        assert_eq!(
            got,
            vec![("open", "indexed".into()), ("open", "unindexed".into())]
        );
    }

    #[test]
    fn properties_json_lacks_such_as_length_are_not_filtered_out() {
        let mut ev = with(
            &[json!({"name": "two-tags", "when": "event.tags.length == '2'"})],
            0,
        );
        ev.on_event(&event("s", json!({"tags": ["a", "b"]})), 0, 0);
        assert_eq!(kinds(&ev.drain()), vec![("open", "two-tags".into())]);
    }

    #[test]
    fn topic_data_of_private_sources_is_not_visible_to_others() {
        let mut ev = Evaluator::new(Limits::default());
        ev.access.set_source("bobs", "bob", false);
        ev.on_event(&event("bobs", json!({"secret": "s3cr3t"})), 0, 0);
        ev.upsert("ann", rule(json!({"name": "spy", "kind": "script",
            "script": "function handle(event, ctx){ ctx.fire({key: 'x', summary: JSON.stringify(_topic)}); }"})), 0)
            .expect("loads");
        ev.drain();
        ev.on_event(&event("anns", json!({})), 0, 1);
        let out = ev.drain();
        let leaked = out.changes.iter().any(
            |c| matches!(c, Change::Open { content, .. } if content.summary.contains("s3cr3t")),
        );
        assert!(!leaked, "ann read bob's private source: {:?}", out.changes);
    }

    #[test]
    fn a_removed_rules_state_is_reported_gone() {
        let mut ev = with(
            &[json!({"name": "hb", "kind": "absence", "expect_every": "1m", "group_by": ["host"]})],
            0,
        );
        ev.on_event(&event("s", json!({"host": "a"})), 0, 0);
        ev.drain();
        assert_eq!(ev.take_dirty().len(), 1);
        ev.remove("ann", "hb", 1);
        let gone = ev.take_dirty();
        assert!(
            gone.iter()
                .any(|u| u.rule == "hb" && u.key == "a" && u.state.is_none()),
            "the store is never told to delete hb/a: {gone:?}"
        );
    }

    #[test]
    fn emit_fan_out_is_capped() {
        let r = rule(json!({"name": "amp", "kind": "script", "source": "x",
            "script": "function handle(event, ctx){ for (var i = 0; i < 4; i++) ctx.emit('x', {i: i}); }"}));
        let out = dry_run(
            Limits::default(),
            "ann",
            vec![r],
            &[event("x", json!({}))],
            0,
            0,
        )
        .expect("runs");
        assert!(
            out.emitted.len() < 1000,
            "one event became {} events",
            out.emitted.len()
        );
    }

    #[test]
    fn huge_durations_do_not_overflow_timers() {
        let err = crate::rule::parse_doc(json!({"name": "t", "kind": "threshold", "when": "event.v > 1", "for": "9223372036854775s"}))
            .expect_err("refused");
        assert!(err.message.contains("100 years"), "{err}");
        let mut ev = with(
            &[json!({"name": "t", "kind": "threshold", "when": "event.v > 1", "for": "36500d"})],
            0,
        );
        ev.on_event(&event("s", json!({"v": 2})), 0, 1_795_600_800_000);
        ev.drain();
        ev.advance(1_795_600_800_001);
        assert!(ev.drain().changes.is_empty(), "a century is a century");
    }

    #[test]
    fn changing_a_rules_keys_resolves_alerts_no_event_could_close() {
        let mut ev = with(
            &[
                json!({"name": "t", "kind": "threshold", "when": "event.v > 1", "group_by": ["host"]}),
            ],
            0,
        );
        ev.on_event(&event("s", json!({"host": "a", "v": 2})), 0, 0);
        ev.drain();
        ev.upsert("ann", rule(json!({"name": "t", "kind": "threshold", "when": "event.v > 5", "group_by": ["host"]})), 1)
            .expect("same keys");
        assert!(
            ev.drain().changes.is_empty(),
            "a new condition keeps the alert"
        );
        ev.upsert("ann", rule(json!({"name": "t", "kind": "threshold", "when": "event.v > 5", "group_by": ["dc"]})), 2)
            .expect("new keys");
        let out = ev.drain();
        assert!(
            matches!(
                out.changes[..],
                [Change::Resolve {
                    reason: ResolveReason::RuleChanged,
                    ..
                }]
            ),
            "{:?}",
            out.changes
        );
    }

    #[test]
    fn a_pending_alert_resolved_by_hand_is_kept_as_resolved() {
        let mut ev = with(
            &[json!({"name": "t", "kind": "threshold", "when": "event.v > 1", "for": "5m"})],
            0,
        );
        ev.on_event(&event("s", json!({"v": 2})), 0, 0);
        ev.drain();
        let alert = AlertKey {
            id: "a1".into(),
            owner: "ann".into(),
            rule: "t".into(),
            key: "t".into(),
        };
        let stale = AlertKey {
            id: "an-older-alert".into(),
            ..alert.clone()
        };
        assert!(!ev.is_open(&stale), "only the alert with that id");
        assert!(!ev.resolve_by_hand(&stale, MIN));
        assert!(ev.drain().changes.is_empty());
        assert!(ev.resolve_by_hand(&alert, MIN));
        assert!(matches!(
            ev.drain().changes[..],
            [Change::Resolve {
                reason: ResolveReason::Manual,
                ..
            }]
        ));
        ev.advance(10 * MIN);
        assert!(ev.drain().changes.is_empty(), "its `for` timer is gone");
    }

    #[test]
    fn repeats_while_firing_until_acknowledged_and_after_restart() {
        let doc = json!({"name": "r", "when": "true", "repeat_every": "10m"});
        let mut ev = with(std::slice::from_ref(&doc), 0);
        ev.on_event(&event("s", json!({})), 0, 0);
        ev.drain();
        let mut at: Vec<i64> = Vec::new();
        for minute in 1..=25 {
            ev.advance(minute * MIN);
            at.extend(ev.drain().changes.iter().filter_map(|c| match c {
                Change::Repeat { at, .. } => Some(*at),
                _ => None,
            }));
        }
        assert_eq!(at, vec![10 * MIN, 20 * MIN]);
        // After a stall of 25 minutes, one reminder, not three.
        ev.advance(50 * MIN);
        assert_eq!(ev.drain().changes.len(), 1);
        // After a restart at 35 min the next repeat is at 40 (the one at 30 may have gone).
        let mut restarted = with(&[doc], 35 * MIN);
        let alert = AlertKey {
            id: "a1".into(),
            owner: "ann".into(),
            rule: "r".into(),
            key: "r".into(),
        };
        restarted.restore_open(&alert, Status::Firing, Some(0), false, 35 * MIN);
        restarted.advance(39 * MIN);
        assert!(restarted.drain().changes.is_empty());
        restarted.advance(40 * MIN);
        assert!(
            matches!(restarted.drain().changes[..], [Change::Repeat { at, .. }] if at == 40 * MIN)
        );
        restarted.acknowledge(&alert);
        restarted.advance(60 * MIN);
        assert!(
            restarted.drain().changes.is_empty(),
            "no repeats once acknowledged"
        );
    }
}
