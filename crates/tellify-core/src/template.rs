//! Jinja templates (minijinja) for alert keys, summaries, bodies, labels and links.
//!
//! Each rule's templates are compiled once into their own environment, so a rule that changes
//! recompiles only itself. Rendering has a fuel limit so a runaway loop in a template cannot
//! stall the engine. Compiling also checks that every filter and test a template names
//! exists, so a misspelt filter is refused when the template is saved, not when the first
//! event renders it.
//!
//! Besides minijinja's own filters there are two for times:
//! - `datetime(format="%Y-%m-%d %H:%M %Z", tz="UTC")`: an epoch-ms number or an RFC 3339
//!   string as a time in an IANA zone, with a strftime format:
//!   `{{ event.failed_at | datetime("%Y-%m-%d %H:%M", "Europe/Berlin") }}`;
//! - `ago`: how long before the render time a time was, `5 minutes ago` (`in 5 minutes`
//!   for a time after it). The render time is the context's `now` (epoch ms), which the
//!   caller gives: this crate reads no clock.

use chrono::{DateTime, TimeZone, Utc};
use minijinja::{Environment, Error, ErrorKind, State, UndefinedBehavior, Value};

use crate::rule::RuleError;

/// Fuel for one render: plenty for loops over an event's fields, not for a runaway.
const FUEL: u64 = 100_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Lenient);
    env.set_fuel(Some(FUEL));
    env.add_filter("datetime", datetime);
    env.add_filter("ago", ago);
    // Templates named `*.html` escape HTML; keys, summaries, labels and links are plain text.
    env.set_auto_escape_callback(|name| {
        if name.ends_with(".html") {
            minijinja::AutoEscape::Html
        } else {
            minijinja::AutoEscape::None
        }
    });
    env
}

/// Converts anything serializable (an event, params) into a template value.
pub fn to_value<T: serde::Serialize>(value: T) -> Value {
    Value::from(minijinja::value::Serde(value))
}

/// A set of named templates compiled once.
pub struct Templates {
    env: Environment<'static>,
}

impl Templates {
    /// Compiles `(name, source)` pairs; a template that does not parse names its field and line.
    pub fn compile<'a>(
        sources: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<Self, RuleError> {
        let mut env = environment();
        for (name, source) in sources {
            env.add_template_owned(name.clone(), source.to_owned())
                .map_err(|e| RuleError {
                    field: Some(name.clone()),
                    message: format!("template does not parse: {}", e.detail().unwrap_or("")),
                    line: e.line().map(|l| l as u32),
                    column: None,
                    failures: Vec::new(),
                })?;
            check_names(&env, &name)?;
        }
        Ok(Self { env })
    }

    pub fn has(&self, name: &str) -> bool {
        self.env.get_template(name).is_ok()
    }

    /// Renders the template `name`; `Ok(None)` if there is none by that name.
    pub fn render(&self, name: &str, ctx: &Value) -> Result<Option<String>, String> {
        match self.env.get_template(name) {
            Ok(t) => t.render(ctx).map(Some).map_err(|e| describe(name, &e)),
            Err(_) => Ok(None),
        }
    }
}

/// Renders a template used once (template instantiation).
pub fn render_once(source: &str, ctx: Value) -> Result<String, String> {
    environment()
        .render_str(source, ctx)
        .map_err(|e| describe("template", &e))
}

/// Refuses a template that names a filter or test the environment does not have: minijinja
/// looks them up only when the expression runs, which may be long after the template was
/// saved (or never, in a branch no event has taken yet).
fn check_names(env: &Environment<'static>, name: &str) -> Result<(), RuleError> {
    use minijinja::machinery::{Instruction, get_compiled_template};
    let template = env
        .get_template(name)
        .map_err(|e| RuleError::new(Some(name), e.to_string()))?;
    let compiled = get_compiled_template(&template);
    for code in std::iter::once(&compiled.instructions).chain(compiled.blocks.values()) {
        let mut idx = 0;
        while let Some(instruction) = code.get(idx) {
            let unknown = match instruction {
                Instruction::ApplyFilter(filter, ..) => probe(
                    env,
                    &format!("{{{{ none | {filter} }}}}"),
                    ErrorKind::UnknownFilter,
                )
                .then(|| format!("unknown filter `{filter}`")),
                Instruction::PerformTest(test, ..) => probe(
                    env,
                    &format!("{{{{ none is {test} }}}}"),
                    ErrorKind::UnknownTest,
                )
                .then(|| format!("unknown test `{test}`")),
                _ => None,
            };
            if let Some(message) = unknown {
                return Err(RuleError {
                    field: Some(name.to_owned()),
                    message,
                    line: code.get_line(idx).map(|l| l as u32),
                    column: None,
                    failures: Vec::new(),
                });
            }
            idx += 1;
        }
    }
    Ok(())
}

/// Whether rendering `source` fails with `kind` (the name it uses is not there).
fn probe(env: &Environment<'static>, source: &str, kind: ErrorKind) -> bool {
    env.render_str(source, ()).is_err_and(|e| e.kind() == kind)
}

/// A time given as epoch ms (a number or a string of digits) or RFC 3339; `None` for none.
fn instant(filter: &str, value: &Value) -> Result<Option<DateTime<Utc>>, Error> {
    if value.is_undefined() || value.is_none() {
        return Ok(None);
    }
    let bad = || {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("{filter}: `{value}` is neither epoch milliseconds nor an RFC 3339 time"),
        )
    };
    let ms = match value.as_str() {
        Some(text) => match DateTime::parse_from_rfc3339(text.trim()) {
            Ok(t) => return Ok(Some(t.with_timezone(&Utc))),
            Err(_) => text.trim().parse::<f64>().map_err(|_| bad())?,
        },
        None => f64::try_from(value.clone()).map_err(|_| bad())?,
    };
    if !ms.is_finite() {
        return Err(bad());
    }
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .map(Some)
        .ok_or_else(bad)
}

/// `datetime(format, tz)`: a time in a zone, formatted (see the module's documentation).
fn datetime(value: Value, format: Option<String>, tz: Option<String>) -> Result<String, Error> {
    let Some(t) = instant("datetime", &value)? else {
        return Ok(String::new());
    };
    let format = format.as_deref().unwrap_or("%Y-%m-%d %H:%M %Z");
    let tz = tz.as_deref().unwrap_or("UTC");
    let zone: chrono_tz::Tz = tz.parse().map_err(|_| {
        Error::new(
            ErrorKind::InvalidOperation,
            format!("datetime: unknown time zone `{tz}` (an IANA name such as `Europe/Berlin`)"),
        )
    })?;
    let items = chrono::format::StrftimeItems::new(format)
        .parse()
        .map_err(|_| {
            Error::new(
                ErrorKind::InvalidOperation,
                format!("datetime: `{format}` is not a strftime format such as `%Y-%m-%d %H:%M`"),
            )
        })?;
    Ok(t.with_timezone(&zone)
        .format_with_items(items.iter())
        .to_string())
}

/// `ago`: the time between a time and the render time (`now` in the context), in words.
fn ago(state: &State, value: Value) -> Result<String, Error> {
    let Some(t) = instant("ago", &value)? else {
        return Ok(String::new());
    };
    let now = state
        .lookup("now")
        .and_then(|n| n.as_i64())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidOperation,
                "ago: this template is rendered without a time to count from",
            )
        })?;
    let ms = now - t.timestamp_millis();
    let secs = (ms / 1000).unsigned_abs();
    if secs == 0 {
        return Ok("just now".to_owned());
    }
    let (n, unit) = match secs {
        s if s < 60 => (s, "second"),
        s if s < 3600 => (s / 60, "minute"),
        s if s < 86_400 => (s / 3600, "hour"),
        s => (s / 86_400, "day"),
    };
    let plural = if n == 1 { "" } else { "s" };
    Ok(if ms > 0 {
        format!("{n} {unit}{plural} ago")
    } else {
        format!("in {n} {unit}{plural}")
    })
}

fn describe(name: &str, e: &minijinja::Error) -> String {
    let mut message = format!("{name}: {}", e.kind());
    if let Some(detail) = e.detail() {
        message.push_str(": ");
        message.push_str(detail);
    }
    if let Some(line) = e.line() {
        message.push_str(&format!(" (line {line})"));
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiles_renders_and_reports_errors() {
        let t = Templates::compile([
            ("summary".to_owned(), "{{ event.host }} at {{ event.pct }}%"),
            ("body.html".to_owned(), "<b>{{ event.host }}</b>"),
        ])
        .expect("valid templates");
        let ctx = to_value(serde_json::json!({"event": {"host": "<cad>", "pct": 93.5}}));
        assert_eq!(
            t.render("summary", &ctx).expect("renders").as_deref(),
            Some("<cad> at 93.5%")
        );
        assert_eq!(
            t.render("body.html", &ctx).expect("renders").as_deref(),
            Some("<b>&lt;cad&gt;</b>")
        );
        assert_eq!(t.render("nope", &ctx), Ok(None));
        let err = Templates::compile([("summary".to_owned(), "line1\n{{ event.host ")])
            .err()
            .expect("does not parse");
        assert_eq!(err.field.as_deref(), Some("summary"));
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn unknown_filters_and_tests_are_refused_when_compiled() {
        let err = Templates::compile([(
            "labels.when".to_owned(),
            "ok\n{% if event.x %}{{ event.x | no_such_filter }}{% endif %}",
        )])
        .err()
        .expect("an unknown filter is refused");
        assert_eq!(err.field.as_deref(), Some("labels.when"));
        assert_eq!(err.message, "unknown filter `no_such_filter`");
        assert_eq!(err.line, Some(2));
        let err = Templates::compile([("body".to_owned(), "{% if 1 is frob %}x{% endif %}")])
            .err()
            .expect("an unknown test is refused");
        assert_eq!(err.message, "unknown test `frob`");
        Templates::compile([(
            "body".to_owned(),
            "{{ x | upper | default('-') }} {{ t | datetime('%H:%M', 'Europe/Berlin') }} {{ t | ago }} {% if x is defined %}{% endif %}",
        )])
        .expect("known filters and tests pass");
    }

    #[test]
    fn times_are_formatted_in_a_zone_and_relative_to_now() {
        let t = Templates::compile([
            (
                "at".to_owned(),
                "{{ t | datetime('%Y-%m-%d %H:%M', 'Europe/Berlin') }}",
            ),
            ("utc".to_owned(), "{{ t | datetime }}"),
            ("ago".to_owned(), "{{ t | ago }}"),
        ])
        .expect("valid");
        // 2026-11-25T10:00:00Z; Berlin is UTC+1 in November.
        let ms = 1_795_600_800_000_i64;
        let ctx =
            |t: serde_json::Value, now: i64| to_value(serde_json::json!({"t": t, "now": now}));
        let got = |name: &str, c: &Value| t.render(name, c).expect("renders").expect("exists");
        assert_eq!(got("at", &ctx(ms.into(), 0)), "2026-11-25 11:00");
        assert_eq!(
            got("at", &ctx("2026-11-25T10:00:00Z".into(), 0)),
            "2026-11-25 11:00"
        );
        assert_eq!(got("utc", &ctx(ms.into(), 0)), "2026-11-25 10:00 UTC");
        assert_eq!(got("utc", &ctx(serde_json::Value::Null, 0)), "");
        assert_eq!(
            got("ago", &ctx(ms.into(), ms + 5 * 60_000 + 10)),
            "5 minutes ago"
        );
        assert_eq!(got("ago", &ctx(ms.into(), ms + 3_600_000)), "1 hour ago");
        assert_eq!(
            got("ago", &ctx(ms.into(), ms - 2 * 86_400_000)),
            "in 2 days"
        );
        assert_eq!(got("ago", &ctx(ms.into(), ms)), "just now");
        assert!(t.render("at", &ctx("yesterday".into(), 0)).is_err());
        let no_now = to_value(serde_json::json!({"t": ms}));
        assert!(t.render("ago", &no_now).is_err());
        let bad_zone =
            Templates::compile([("z".to_owned(), "{{ 0 | datetime('%H', 'Mars/Base') }}")])
                .expect("compiles");
        let err = bad_zone
            .render("z", &Value::UNDEFINED)
            .expect_err("unknown zone");
        assert!(err.contains("Mars/Base"), "{err}");
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let t = Templates::compile([(
            "summary".to_owned(),
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        )])
        .expect("parses");
        assert!(t.render("summary", &Value::UNDEFINED).is_err());
    }
}
