//! Tellify's own health in Prometheus form (`GET /metrics`).
//!
//! One struct holds every family, so metric names live in one place and every part of the
//! pipeline records through the same handle.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabel {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleSourceLabel {
    pub rule: String,
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabel {
    pub channel_kind: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub owner: String,
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SeverityLabel {
    pub severity: String,
}

pub struct Metrics {
    registry: Registry,
    pub events_ingested: Family<SourceLabel, Counter>,
    pub events_rejected: Family<ReasonLabel, Counter>,
    pub events_evaluated: Counter,
    pub rule_evaluations: Counter,
    pub rule_errors: Family<RuleLabel, Counter>,
    pub alerts_fired: Family<RuleSourceLabel, Counter>,
    pub alerts_open: Family<SeverityLabel, Gauge>,
    pub source_up: Family<SourceLabel, Gauge>,
    pub deliveries: Family<DeliveryLabel, Counter>,
    pub delivery_seconds: Histogram,
    /// Each channel's circuit breaker: 0 closed, 1 half-open, 2 open.
    pub channel_circuit: Family<ChannelLabel, Gauge>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tellify");
        let events_ingested = Family::<SourceLabel, Counter>::default();
        registry.register(
            "events_ingested",
            "Events accepted and stored, by source",
            events_ingested.clone(),
        );
        let events_rejected = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "events_rejected",
            "Events refused, by reason",
            events_rejected.clone(),
        );
        let events_evaluated = Counter::default();
        registry.register(
            "events_evaluated",
            "Events the engine has applied the rules to and committed",
            events_evaluated.clone(),
        );
        let rule_evaluations = Counter::default();
        registry.register(
            "rule_evaluations",
            "JavaScript evaluations of rule conditions and scripts",
            rule_evaluations.clone(),
        );
        let rule_errors = Family::<RuleLabel, Counter>::default();
        registry.register(
            "rule_errors",
            "Rule evaluations that threw or ran out of budget",
            rule_errors.clone(),
        );
        let alerts_fired = Family::<RuleSourceLabel, Counter>::default();
        registry.register(
            "alerts_fired",
            "Alerts that started firing, by rule and source",
            alerts_fired.clone(),
        );
        let alerts_open = Family::<SeverityLabel, Gauge>::default();
        registry.register(
            "alerts_open",
            "Alerts firing now, by severity",
            alerts_open.clone(),
        );
        let source_up = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "source_up",
            "1 while a broker source is connected",
            source_up.clone(),
        );
        let deliveries = Family::<DeliveryLabel, Counter>::default();
        registry.register(
            "deliveries",
            "Delivery attempts by channel kind and outcome (sent, retry, deferred, dead)",
            deliveries.clone(),
        );
        // Alert change → delivered: from a few ms (a webhook on the same host) to an hour of
        // retries.
        let delivery_seconds = Histogram::new([
            0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
        ]);
        registry.register(
            "delivery_seconds",
            "Time from an alert change to its notification being delivered",
            delivery_seconds.clone(),
        );
        let channel_circuit = Family::<ChannelLabel, Gauge>::default();
        registry.register(
            "channel_circuit_state",
            "Each channel's circuit breaker: 0 closed, 1 half-open (the next send tries), 2 open (sends wait)",
            channel_circuit.clone(),
        );
        Self {
            registry,
            channel_circuit,
            deliveries,
            delivery_seconds,
            events_ingested,
            events_rejected,
            events_evaluated,
            rule_evaluations,
            rule_errors,
            alerts_fired,
            alerts_open,
            source_up,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
