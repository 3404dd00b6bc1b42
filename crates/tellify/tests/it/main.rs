//! Integration tests: the real `tellify` binary on a free port, with a temporary data
//! directory and an injected clock, talked to over HTTP.

mod harness;

mod brokers;
mod receiver;

mod channels;
mod cli;
mod core_flows;
mod crash;
mod email;
mod failures;
mod fairness;
mod hostile;
mod ingest;
mod isolation;
mod kafka;
mod notify;
mod notify_regressions;
mod regressions;
mod smtp;
