//! Subscriptions: which alerts go to which channel, and when.
//!
//! A subscription matches an alert change by rule name (globs), severity, labels and the kind
//! of change (`notify_on`); its `schedule` says when, in its owner's time zone, it is awake;
//! its `digest` says whether matching changes are sent at once or gathered. All of it is pure:
//! time is an argument, time zones come from chrono-tz, so DST is handled by the tz database.

use chrono::{Datelike, NaiveDate, NaiveTime, TimeZone, Weekday};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::alert::Severity;
use crate::matchers::{LabelGlobs, glob};
use crate::rule::Duration;

/// The kinds of alert change a subscription can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Fire,
    Resolve,
    Ack,
    Repeat,
    Disable,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Fire => "fire",
            Trigger::Resolve => "resolve",
            Trigger::Ack => "ack",
            Trigger::Repeat => "repeat",
            Trigger::Disable => "disable",
        }
    }
}

/// How a message is laid out for its medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageFormat {
    Html,
    Text,
    Short,
}

/// A day-of-week time window, in the owner's time zone. `to` before `from` wraps: on each of
/// its days it covers the morning until `to` and the evening from `from`, so
/// `{days: [mon..fri], from: "18:00", to: "09:00"}` is "weekdays outside 09–18".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Days the window applies to; empty means every day.
    #[serde(default)]
    pub days: Vec<Day>,
    pub from: Clock,
    pub to: Clock,
}

/// A weekday as written in schedules: `mon` … `sun`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Day {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

impl Day {
    fn weekday(self) -> Weekday {
        match self {
            Day::Mon => Weekday::Mon,
            Day::Tue => Weekday::Tue,
            Day::Wed => Weekday::Wed,
            Day::Thu => Weekday::Thu,
            Day::Fri => Weekday::Fri,
            Day::Sat => Weekday::Sat,
            Day::Sun => Weekday::Sun,
        }
    }
}

/// A local time of day written `HH:MM` (`24:00` is the end of the day).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Clock {
    /// Minutes after midnight, 0 to 1440.
    pub minutes: u32,
}

impl Clock {
    fn time(self) -> NaiveTime {
        NaiveTime::from_hms_opt(self.minutes / 60 % 24, self.minutes % 60, 0)
            .expect("minutes < 1440 make a valid time")
    }
}

impl std::str::FromStr for Clock {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a time of day like 09:00");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if m >= 60 || h > 24 || (h == 24 && m != 0) || s.len() != 5 {
            return Err(bad());
        }
        Ok(Clock {
            minutes: h * 60 + m,
        })
    }
}

impl Serialize for Clock {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!(
            "{:02}:{:02}",
            self.minutes / 60,
            self.minutes % 60
        ))
    }
}

impl<'de> Deserialize<'de> for Clock {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Gathering alerts into one message: every period, or at local times of day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Digest {
    /// Send what gathered each `every` after the first change of a period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every: Option<Duration>,
    /// Hold changes until the next of these local times.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub at: Vec<Clock>,
}

/// Either one window or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Schedule {
    One(Window),
    Many(Vec<Window>),
}

/// What a schedule looks like, for errors.
const SCHEDULE_SHAPE: &str = r#"a window {"days": [mon, tue, …], "from": "HH:MM", "to": "HH:MM"} (in the owner's time zone) or a list of them"#;

/// By hand rather than `untagged`, whose only error is "data did not match any variant": an
/// object is one window, a list is several, and a field at fault inside says which it is.
impl<'de> Deserialize<'de> for Schedule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = Schedule;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(SCHEDULE_SHAPE)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Schedule, A::Error> {
                Window::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(Schedule::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Schedule, A::Error> {
                Vec::<Window>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(Schedule::Many)
            }
        }
        d.deserialize_any(Shape)
    }
}

impl Schedule {
    fn windows(&self) -> &[Window] {
        match self {
            Schedule::One(w) => std::slice::from_ref(w),
            Schedule::Many(ws) => ws,
        }
    }
}

/// A subscription as users write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The channel (one of the owner's, or a shared one) messages go to.
    pub channel: String,
    /// Rule names or globs; empty means every rule of the owner.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
    /// Label matchers: each label must match its glob.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    /// JavaScript over `alert`; the subscription matches when it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    /// Default: fire and resolve.
    #[serde(default = "default_triggers")]
    pub notify_on: Vec<Trigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<MessageFormat>,
    /// The message text instead of the default layout: a Jinja template over `alert`,
    /// `alerts` (a digest), `trigger`, `title` and `text` (the default body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
}

fn default_triggers() -> Vec<Trigger> {
    vec![Trigger::Fire, Trigger::Resolve]
}

/// What a subscription is matched against.
pub struct AlertFacts<'a> {
    pub rule: &'a str,
    pub severity: Severity,
    pub labels: &'a std::collections::BTreeMap<String, String>,
}

/// What a digest looks like, for errors.
const DIGEST_SHAPE: &str = r#"{"every": "1m"} or {"at": ["06:00", …]}"#;

impl SubscriptionSpec {
    /// Reads a subscription from JSON; an error names the field and, for a schedule or a
    /// digest, what one looks like.
    pub fn from_json(value: serde_json::Value) -> Result<Self, String> {
        crate::fields::from_json(value).map_err(|e| {
            let shape = match e.field.as_deref() {
                Some(f) if f.starts_with("schedule") => Some(SCHEDULE_SHAPE),
                Some(f) if f.starts_with("digest") => Some(DIGEST_SHAPE),
                _ => None,
            };
            match shape {
                Some(shape) if !e.message.contains(shape) => format!("{e}; expected {shape}"),
                _ => e.to_string(),
            }
        })
    }
}

/// A subscription checked and ready to match.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub spec: SubscriptionSpec,
    rules: Vec<globset::GlobMatcher>,
    labels: LabelGlobs,
}

impl Subscription {
    /// Checks a subscription; every problem names its field.
    pub fn new(spec: SubscriptionSpec) -> Result<Self, String> {
        if spec.channel.trim().is_empty() {
            return Err("`channel`: must name a channel".into());
        }
        let rules = spec
            .rules
            .iter()
            .map(|r| glob(r))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("`rules`: {e}"))?;
        let labels = LabelGlobs::new(&spec.labels).map_err(|e| format!("`labels`: {e}"))?;
        if let Some(digest) = &spec.digest {
            match (digest.every, digest.at.is_empty()) {
                (Some(_), false) | (None, true) => {
                    return Err("`digest`: give either `every` or `at`".into());
                }
                (Some(every), true) if every.millis() < 1_000 => {
                    return Err("`digest.every`: must be at least 1s".into());
                }
                _ => {}
            }
        }
        if let Some(schedule) = &spec.schedule {
            for w in schedule.windows() {
                if w.from == w.to {
                    return Err("`schedule`: a window's `from` and `to` must differ".into());
                }
            }
        }
        if let Some(t) = &spec.template {
            crate::template::Templates::compile([("template".to_owned(), t.as_str())])
                .map_err(|e| format!("`template`: {}", e.message))?;
        }
        if spec.notify_on.is_empty() {
            return Err(
                "`notify_on`: name at least one of fire, resolve, ack, repeat, disable".into(),
            );
        }
        Ok(Self {
            spec,
            rules,
            labels,
        })
    }

    /// Whether this change of this alert is for this subscription (schedule aside).
    pub fn matches(&self, alert: &AlertFacts<'_>, trigger: Trigger) -> bool {
        self.spec.notify_on.contains(&trigger)
            && (self.rules.is_empty() || self.rules.iter().any(|g| g.is_match(alert.rule)))
            && self
                .spec
                .min_severity
                .is_none_or(|min| alert.severity >= min)
            && self.labels.matches(alert.labels)
    }

    /// Whether the subscription is awake at `at` (epoch ms) in time zone `tz`.
    pub fn awake(&self, at: i64, tz: Tz) -> bool {
        let Some(schedule) = &self.spec.schedule else {
            return true;
        };
        let Some(local) = tz.timestamp_millis_opt(at).single() else {
            return true;
        };
        let minutes = local
            .time()
            .signed_duration_since(NaiveTime::MIN)
            .num_minutes() as u32;
        let today = local.weekday();
        schedule.windows().iter().any(|w| {
            let on_today = w.days.is_empty() || w.days.iter().any(|d| d.weekday() == today);
            on_today
                && if w.from < w.to {
                    minutes >= w.from.minutes && minutes < w.to.minutes
                } else {
                    minutes >= w.from.minutes || minutes < w.to.minutes
                }
        })
    }

    /// When a digest holding a change made at `at` is sent: `None` when there is no digest.
    /// `first_held` is when the period's first change was held (for `every`).
    pub fn digest_due(&self, at: i64, first_held: Option<i64>, tz: Tz) -> Option<i64> {
        let digest = self.spec.digest.as_ref()?;
        if let Some(every) = digest.every {
            return Some(first_held.unwrap_or(at) + every.millis());
        }
        digest
            .at
            .iter()
            .filter_map(|c| next_local(at, *c, tz))
            .min()
    }
}

/// The first instant after `after` at which the local clock in `tz` shows `clock`. On a day
/// when that time does not exist (spring forward), the first instant after the gap.
pub fn next_local(after: i64, clock: Clock, tz: Tz) -> Option<i64> {
    let local = tz.timestamp_millis_opt(after).single()?;
    let mut date: NaiveDate = local.date_naive();
    for _ in 0..3 {
        let naive = if clock.minutes == 24 * 60 {
            date.succ_opt()?.and_time(NaiveTime::MIN)
        } else {
            date.and_time(clock.time())
        };
        let instant = match tz.from_local_datetime(&naive) {
            chrono::LocalResult::Single(t) => Some(t),
            chrono::LocalResult::Ambiguous(first, _) => Some(first),
            // In a DST gap: walk forward by minutes to the first time that exists.
            chrono::LocalResult::None => (1..=180).find_map(|m| {
                tz.from_local_datetime(&(naive + chrono::Duration::minutes(m)))
                    .single()
            }),
        };
        if let Some(t) = instant
            && t.timestamp_millis() > after
        {
            return Some(t.timestamp_millis());
        }
        date = date.succ_opt()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sub(doc: serde_json::Value) -> Subscription {
        Subscription::new(serde_json::from_value(doc).expect("parses")).expect("valid")
    }

    fn ms(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .expect("time")
            .timestamp_millis()
    }

    const BERLIN: Tz = chrono_tz::Europe::Berlin;

    #[test]
    fn work_hours_and_evenings_in_the_owners_zone_across_dst() {
        let work = sub(
            json!({"channel": "work", "schedule": {"days": ["mon","tue","wed","thu","fri"], "from": "09:00", "to": "18:00"}}),
        );
        let off = sub(json!({"channel": "home", "schedule": [
            {"days": ["mon","tue","wed","thu","fri"], "from": "18:00", "to": "09:00"},
            {"days": ["sat","sun"], "from": "00:00", "to": "24:00"}]}));
        // Friday 2026-10-23 09:30 in Berlin is 07:30 UTC (summer time).
        assert!(work.awake(ms("2026-10-23T07:30:00Z"), BERLIN));
        assert!(!off.awake(ms("2026-10-23T07:30:00Z"), BERLIN));
        // Friday 18:30 local: evening.
        assert!(!work.awake(ms("2026-10-23T16:30:00Z"), BERLIN));
        assert!(off.awake(ms("2026-10-23T16:30:00Z"), BERLIN));
        // Monday 2026-10-26 08:30 local is 07:30 UTC after the clocks went back on Sunday:
        // a weekday morning before work.
        assert!(!work.awake(ms("2026-10-26T07:30:00Z"), BERLIN));
        assert!(off.awake(ms("2026-10-26T07:30:00Z"), BERLIN));
        // Monday 09:30 local (08:30 UTC in winter): work; the same UTC time a week earlier
        // (summer) was 10:30 local, also work.
        assert!(work.awake(ms("2026-10-26T08:30:00Z"), BERLIN));
        assert!(!off.awake(ms("2026-10-26T08:30:00Z"), BERLIN));
        // Saturday midday.
        assert!(off.awake(ms("2026-10-24T11:00:00Z"), BERLIN));
        assert!(!work.awake(ms("2026-10-24T11:00:00Z"), BERLIN));
    }

    #[test]
    fn a_bad_schedule_says_where_and_what_a_schedule_looks_like() {
        let err = |v: serde_json::Value| SubscriptionSpec::from_json(v).expect_err("refused");
        assert_eq!(
            err(json!({"channel": "c", "schedule": "weekdays"})),
            format!("`schedule`: invalid type: string \"weekdays\", expected {SCHEDULE_SHAPE}")
        );
        assert_eq!(
            err(
                json!({"channel": "c", "schedule": {"days": ["monday"], "from": "09:00", "to": "18:00"}})
            ),
            format!(
                "`schedule.days[0]`: unknown variant `monday`, expected one of `mon`, `tue`, `wed`, `thu`, `fri`, `sat`, `sun`; expected {SCHEDULE_SHAPE}"
            )
        );
        assert_eq!(
            err(json!({"channel": "c", "schedule": [{"from": "09:00", "to": "25:00"}]})),
            format!(
                "`schedule[0].to`: `25:00` is not a time of day like 09:00; expected {SCHEDULE_SHAPE}"
            )
        );
        assert_eq!(
            err(json!({"channel": "c", "schedule": {"from": "09:00"}})),
            format!("`schedule`: missing field `to`; expected {SCHEDULE_SHAPE}")
        );
        assert_eq!(
            err(json!({"channel": "c", "digest": {"every": "often"}})),
            format!(
                "`digest.every`: `often` is not a duration like 30s, 5m or 1h: expected number at 0; expected {DIGEST_SHAPE}"
            )
        );
        assert_eq!(
            err(json!({"channel": "c", "min_severity": "urgent"})),
            "`min_severity`: unknown variant `urgent`, expected one of `info`, `warning`, `error`, `critical`"
        );
        let ok = SubscriptionSpec::from_json(
            json!({"channel": "c", "schedule": [{"from": "09:00", "to": "18:00"}]}),
        )
        .expect("a list of windows");
        assert!(matches!(ok.schedule, Some(Schedule::Many(ref w)) if w.len() == 1));
    }

    #[test]
    fn matching_by_rule_severity_labels_and_trigger() {
        let s = sub(
            json!({"channel": "c", "rules": ["disk-*"], "min_severity": "error",
            "labels": {"host": "cad*"}, "notify_on": ["fire"]}),
        );
        let labels = [("host".to_owned(), "cadfs01".to_owned())]
            .into_iter()
            .collect();
        let facts = |rule, severity| AlertFacts {
            rule,
            severity,
            labels: &labels,
        };
        assert!(s.matches(&facts("disk-usage", Severity::Critical), Trigger::Fire));
        assert!(!s.matches(&facts("disk-usage", Severity::Critical), Trigger::Resolve));
        assert!(!s.matches(&facts("disk-usage", Severity::Warning), Trigger::Fire));
        assert!(!s.matches(&facts("cpu", Severity::Critical), Trigger::Fire));
        let other = Default::default();
        assert!(!s.matches(
            &AlertFacts {
                rule: "disk-usage",
                severity: Severity::Critical,
                labels: &other
            },
            Trigger::Fire
        ));
    }

    #[test]
    fn digests_are_due_after_their_period_or_at_local_times() {
        let every = sub(json!({"channel": "c", "digest": {"every": "1m"}}));
        assert_eq!(every.digest_due(1_000, None, BERLIN), Some(61_000));
        assert_eq!(every.digest_due(30_000, Some(1_000), BERLIN), Some(61_000));
        let at = sub(json!({"channel": "c", "digest": {"at": ["06:00"]}}));
        // 23:00 local on 2026-10-24 (21:00 UTC, summer) → 06:00 local on the 25th, after the
        // clocks went back at 03:00: that is 05:00 UTC.
        assert_eq!(
            at.digest_due(ms("2026-10-24T21:00:00Z"), None, BERLIN),
            Some(ms("2026-10-25T05:00:00Z"))
        );
        // Spring forward: 02:30 does not exist on 2026-03-29 in Berlin; the digest goes at 03:00.
        let gap = sub(json!({"channel": "c", "digest": {"at": ["02:30"]}}));
        assert_eq!(
            gap.digest_due(ms("2026-03-28T23:00:00Z"), None, BERLIN),
            Some(ms("2026-03-29T01:00:00Z"))
        );
    }

    #[test]
    fn bad_subscriptions_name_their_field() {
        let bad = |doc: serde_json::Value| {
            Subscription::new(serde_json::from_value(doc).expect("parses")).expect_err("invalid")
        };
        assert!(
            bad(json!({"channel": "c", "digest": {"every": "1m", "at": ["06:00"]}}))
                .contains("digest")
        );
        assert!(bad(json!({"channel": "c", "rules": ["[bad"]})).contains("rules"));
        assert!(bad(json!({"channel": "c", "notify_on": []})).contains("notify_on"));
        assert!(
            serde_json::from_value::<SubscriptionSpec>(
                json!({"channel": "c", "schedule": {"from": "9am", "to": "18:00"}})
            )
            .is_err()
        );
    }
}
