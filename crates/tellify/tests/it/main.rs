//! Integration tests: the real `tellify` binary on a free port, with a temporary data
//! directory and an injected clock, talked to over HTTP.

mod harness;

mod brokers;
mod receiver;

mod api_shape;
mod channels;
mod cli;
mod core_flows;
mod crash;
mod defects;
mod demo;
mod drain;
mod email;
mod failures;
mod fairness;
mod hostile;
mod hygiene;
mod ingest;
mod isolation;
mod kafka;
mod links;
mod notify;
mod notify_regressions;
mod openapi;
mod regressions;
mod secrets;
mod smtp;
mod storage;
mod web;
