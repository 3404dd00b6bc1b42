//! Events: what producers send, and the parsers that turn request bodies into them.
//!
//! An event is a JSON object with a source name and a time. The parsers here are all-or-nothing:
//! they either return every event of a body or the first bad one with its index, so the HTTP
//! layer can refuse a whole request without storing part of it.

use serde_json::{Map, Value};

/// One event as the engine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The named stream the event came from (`?source=` or the broker topic).
    pub source: String,
    /// The event's own time (its `time`/`timestamp` field) or its arrival time, in epoch ms.
    pub time: i64,
    /// The JSON object the producer sent.
    pub data: Value,
}

/// Why a body could not be turned into events; `index` is the 0-based event the error is in.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("event {index}: {message}")]
pub struct BadEvent {
    pub index: usize,
    pub message: String,
}

impl BadEvent {
    fn new(index: usize, message: impl Into<String>) -> Self {
        Self {
            index,
            message: message.into(),
        }
    }
}

/// The payload formats HTTP and broker sources accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object, or an array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
    /// One event per line in `key:value` form.
    Text,
}

/// Parses a body in `format` into JSON objects (not yet [`Event`]s: source and time come later).
pub fn parse_body(format: Format, body: &str) -> Result<Vec<Map<String, Value>>, BadEvent> {
    match format {
        Format::Json => parse_json(body),
        Format::Ndjson => parse_ndjson(body),
        Format::Text => parse_text(body),
    }
}

fn parse_json(body: &str) -> Result<Vec<Map<String, Value>>, BadEvent> {
    let value: Value =
        serde_json::from_str(body).map_err(|e| BadEvent::new(0, format!("malformed JSON: {e}")))?;
    match value {
        Value::Object(map) => Ok(vec![map]),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(index, item)| match item {
                Value::Object(map) => Ok(map),
                other => Err(BadEvent::new(
                    index,
                    format!("an event must be a JSON object, not {}", json_kind(&other)),
                )),
            })
            .collect(),
        other => Err(BadEvent::new(
            0,
            format!(
                "the body must be a JSON object or an array of objects, not {}",
                json_kind(&other)
            ),
        )),
    }
}

fn parse_ndjson(body: &str) -> Result<Vec<Map<String, Value>>, BadEvent> {
    body.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(BadEvent::new(
                index,
                format!("an event must be a JSON object, not {}", json_kind(&other)),
            )),
            Err(e) => Err(BadEvent::new(index, format!("malformed JSON: {e}"))),
        })
        .collect()
}

fn parse_text(body: &str) -> Result<Vec<Map<String, Value>>, BadEvent> {
    body.lines()
        .filter(|line| !line.trim().is_empty())
        .enumerate()
        .map(|(index, line)| parse_text_line(line).map_err(|m| BadEvent::new(index, m)))
        .collect()
}

/// Parses one `key:value` line: `host:cadfs01 used_pct:93.5 alive msg:"disk almost full"`.
///
/// Values that read as JSON numbers become numbers (so `007` stays a string); bare words are
/// gathered, in order, in `words`; a value in double or single quotes may hold spaces and
/// backslash-escaped quotes.
pub fn parse_text_line(line: &str) -> Result<Map<String, Value>, String> {
    let mut map = Map::new();
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            break;
        }
        let mut key = String::new();
        let mut has_colon = false;
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c == ':' {
                has_colon = true;
                break;
            }
            if c == '"' || c == '\'' {
                return Err(format!(
                    "unexpected quote in `{key}{c}`: quote values, not keys"
                ));
            }
            key.push(c);
        }
        if !has_colon {
            words.push(Value::String(key));
            continue;
        }
        if key.is_empty() {
            return Err("a `:` with no key before it".to_owned());
        }
        let value = match chars.peek() {
            Some(&quote @ ('"' | '\'')) => {
                chars.next();
                let mut value = String::new();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some(escaped) => value.push(escaped),
                            None => break,
                        },
                        c if c == quote => {
                            closed = true;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                if !closed {
                    return Err(format!("unterminated quoted value for `{key}`"));
                }
                if chars.peek().is_some_and(|c| !c.is_whitespace()) {
                    return Err(format!("text after the closing quote of `{key}`"));
                }
                Value::String(value)
            }
            _ => {
                let mut raw = String::new();
                while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                    raw.push(c);
                }
                typed_value(raw)
            }
        };
        map.insert(key, value);
    }
    if map.is_empty() && words.is_empty() {
        return Err("empty event".to_owned());
    }
    if !words.is_empty() {
        map.insert("words".to_owned(), Value::Array(words));
    }
    Ok(map)
}

/// A bare value becomes a number when it is one by JSON's grammar, else stays text.
fn typed_value(raw: String) -> Value {
    let numeric = raw
        .bytes()
        .next()
        .is_some_and(|b| b == b'-' || b.is_ascii_digit());
    if numeric && let Ok(number @ Value::Number(_)) = serde_json::from_str::<Value>(&raw) {
        return number;
    }
    Value::String(raw)
}

/// Reads an event's own time from `time` or `timestamp` (RFC 3339 or epoch ms).
///
/// `Ok(None)` means the event carries no time and its arrival time is used.
pub fn event_time(data: &Map<String, Value>) -> Result<Option<i64>, String> {
    for field in ["time", "timestamp"] {
        match data.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::Number(n)) => {
                return n
                    .as_i64()
                    .or_else(|| n.as_f64().map(|f| f as i64))
                    .map(Some)
                    .ok_or_else(|| format!("`{field}` is not a usable epoch-ms number"));
            }
            Some(Value::String(s)) => {
                return chrono::DateTime::parse_from_rfc3339(s)
                    .map(|t| Some(t.timestamp_millis()))
                    .map_err(|e| format!("`{field}` is neither RFC 3339 nor epoch ms: {e}"));
            }
            Some(other) => {
                return Err(format!(
                    "`{field}` must be an RFC 3339 string or epoch ms, not {}",
                    json_kind(other)
                ));
            }
        }
    }
    Ok(None)
}

/// Builds events from parsed objects: each gets `source` and its own time or `arrival`.
pub fn into_events(
    source: &str,
    objects: Vec<Map<String, Value>>,
    arrival: i64,
) -> Result<Vec<Event>, BadEvent> {
    objects
        .into_iter()
        .enumerate()
        .map(|(index, data)| {
            let time = event_time(&data)
                .map_err(|m| BadEvent::new(index, m))?
                .unwrap_or(arrival);
            Ok(Event {
                source: source.to_owned(),
                time,
                data: Value::Object(data),
            })
        })
        .collect()
}

/// Checks a source name: 1 to 200 characters of letters, digits and `._-/:`.
pub fn validate_source_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
    if name.is_empty() || name.len() > 200 || !ok_chars {
        return Err(format!(
            "source name `{name}` must be 1 to 200 characters of letters, digits and `._-/:`"
        ));
    }
    Ok(())
}

/// Reads a dotted path (`data.state`, `labels.env`) from a JSON value.
pub fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

pub(crate) fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_line_from_the_spec() {
        let map = parse_text_line(
            "project:vr0 block:gc_t route_opt user:gpupi runtag:myruntag completed status:good tns:-50",
        )
        .expect("valid line");
        assert_eq!(
            Value::Object(map),
            json!({"project":"vr0","block":"gc_t","user":"gpupi","runtag":"myruntag",
                   "status":"good","tns":-50,"words":["route_opt","completed"]})
        );
    }

    #[test]
    fn text_values_quoted_numbers_and_ids() {
        let map = parse_text_line(r#"msg:"disk \"almost\" full" id:007 pct:93.5 q:'a b' neg:-1e3"#)
            .expect("valid line");
        assert_eq!(
            Value::Object(map),
            json!({"msg":"disk \"almost\" full","id":"007","pct":93.5,"q":"a b","neg":-1000.0})
        );
    }

    #[test]
    fn text_errors_are_reported_with_their_line() {
        let err = parse_body(Format::Text, "a:1\n\nb:\"open\nc:3").expect_err("unterminated");
        assert_eq!(err.index, 1);
        assert!(err.message.contains("unterminated"), "{}", err.message);
        assert!(parse_text_line(":x").is_err());
        assert!(parse_text_line("a:\"x\"y").is_err());
    }

    #[test]
    fn json_bodies() {
        assert_eq!(
            parse_body(Format::Json, r#"{"a":1}"#)
                .expect("object")
                .len(),
            1
        );
        assert_eq!(
            parse_body(Format::Json, r#"[{"a":1},{"b":2}]"#)
                .expect("array")
                .len(),
            2
        );
        assert_eq!(
            parse_body(Format::Json, r#"[{"a":1},2]"#)
                .expect_err("not object")
                .index,
            1
        );
        assert!(parse_body(Format::Json, "{").is_err());
        assert!(parse_body(Format::Json, "3").is_err());
        let err = parse_body(Format::Ndjson, "{\"a\":1}\n{\"a\":\n").expect_err("bad line");
        assert_eq!(err.index, 1);
    }

    #[test]
    fn event_times() {
        let t = |v: Value| event_time(v.as_object().expect("object"));
        assert_eq!(
            t(json!({"time": 1764065100000_i64})),
            Ok(Some(1764065100000))
        );
        assert_eq!(
            t(json!({"timestamp": "2026-11-25T10:00:00Z"})),
            Ok(Some(1795600800000))
        );
        assert_eq!(t(json!({"x": 1})), Ok(None));
        assert!(t(json!({"time": "yesterday"})).is_err());
        assert!(t(json!({"time": true})).is_err());
    }

    #[test]
    fn paths() {
        let v = json!({"data": {"state": "FAILED", "list": [1, {"x": 2}]}});
        assert_eq!(lookup(&v, "data.state"), Some(&json!("FAILED")));
        assert_eq!(lookup(&v, "data.list.1.x"), Some(&json!(2)));
        assert_eq!(lookup(&v, "data.nope"), None);
    }
}
