//! The Tellify server and command line.
//!
//! # Layout
//!
//! The pipeline reads one way — sources → engine → store → dispatch → notify — with the API
//! around the store:
//!
//! - [`sources`] ① events in: HTTP ingest and the writer that stores events durably.
//! - [`engine`] ② rules applied to events and clocks (the pure `tellify_core::eval`); alert
//!   changes committed.
//! - [`store`] ③ everything remembered, behind the `Store` trait.
//! - [`api`] the HTTP API around the store; [`auth`] tokens; [`web`] the API reference page.
//! - [`app`] the composition root; [`config`] settings; [`clock`] injected time;
//!   [`rule_files`] `--rules` loading; [`demo`] `--demo`; [`cli`] the commands.

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod dispatch;
pub mod engine;
pub mod metrics;
pub mod notify;
pub mod owners;
pub mod rule_files;
pub mod sources;
pub mod storage_watch;
pub mod store;
pub mod web;
pub mod wire;
