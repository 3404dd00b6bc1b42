//! Tellify's pure domain: data in, decisions out.
//!
//! This crate does no I/O — no sockets, files, clocks or threads — so everything in it is
//! deterministic and testable with plain function calls. The server crate (`tellify`) feeds
//! it events and the time, and persists what it decides.
//!
//! # Layout
//!
//! - [`access`]: who may put events into a source and read them (ingest, API and engine).
//! - [`event`]: events and the parsers for JSON, NDJSON and `key:value` text bodies.
//! - [`rule`]: rule documents as users write them (YAML/JSON), validation, templates of rules.
//! - [`expr`]: the JavaScript sandbox (QuickJS through rquickjs) with CPU and memory budgets.
//! - [`template`]: Jinja templates (minijinja) for keys, summaries, labels and links.
//! - [`index`]: which rules could care about an event, without running JavaScript.
//! - [`alert`]: alert statuses, severities and the changes the evaluator decides.
//! - [`eval`]: the evaluator — rules applied to events and time, alert changes out.
//! - [`subscription`]: which alert changes go to which channel, when (schedules in the
//!   owner's time zone, digests).
//! - [`silence`]: muting matching alerts for a time range.
//! - [`fields`]: reading a JSON document into a type, with errors that name the field.
//!
//! The main types connect like this: a [`rule::RuleSpec`] is compiled into the
//! [`eval::Evaluator`], which is fed [`event::Event`]s and clock ticks and emits
//! [`alert::Change`]s plus per-(rule, key) state for the caller to store.

pub mod access;
pub mod alert;
pub mod eval;
pub mod event;
pub mod expr;
pub mod fields;
pub mod index;
pub mod matchers;
pub mod rule;
pub mod silence;
pub mod subscription;
pub mod template;
