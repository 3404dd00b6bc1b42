//! Channel kinds: the settings each takes, which of them are secrets, and how settings are
//! checked, sealed for storage and shown.
//!
//! Secrets (webhook URLs, routing keys, tokens, passwords) are write-only: a read shows
//! `"***"`, and an update that leaves one out or sends `"***"` keeps the stored value.
//! [`Secrets`] is that rule, used for channels and for the SMTP settings alike.

use serde_json::{Map, Value};

use crate::crypto::SecretBox;

/// What is shown instead of a secret.
pub const HIDDEN: &str = "***";

/// Where write-only secrets sit in a settings object, and the one way they are kept across
/// updates, sealed for storage, hidden from reads and opened for sending.
pub struct Secrets {
    /// Settings whose value is a secret.
    pub fields: &'static [&'static str],
    /// Settings holding an object whose every value is a secret (webhook `headers`: the
    /// header names are shown, their values are not).
    pub maps: &'static [&'static str],
}

impl Secrets {
    /// Fills the secrets an update keeps into `new`, from `stored` (the stored settings,
    /// opened): a secret left out or sent as `***` takes its stored value, and so does each
    /// entry of a secret map sent as `***` (the other entries are as sent; a map sent whole
    /// as `***` keeps the stored map). `null` removes a secret. `***` where nothing is stored
    /// is refused, since there is nothing to keep.
    pub fn keep(
        &self,
        new: &mut Map<String, Value>,
        stored: Option<&Map<String, Value>>,
    ) -> Result<(), String> {
        let nothing =
            |f: &str| format!("`{f}` is `***` but nothing is stored: send the secret itself");
        for &field in self.fields {
            let old = stored.and_then(|s| s.get(field)).filter(|v| v.is_string());
            match new.get(field) {
                None => {
                    if let Some(old) = old {
                        new.insert(field.to_owned(), old.clone());
                    }
                }
                Some(Value::String(s)) if s == HIDDEN => {
                    let old = old.ok_or_else(|| nothing(field))?;
                    new.insert(field.to_owned(), old.clone());
                }
                Some(Value::Null) => {
                    new.remove(field);
                }
                // Anything else is the new value (and checked as such).
                Some(_) => {}
            }
        }
        for &field in self.maps {
            let old = stored.and_then(|s| s.get(field)).and_then(Value::as_object);
            match new.get_mut(field) {
                None => {
                    if let Some(old) = old {
                        new.insert(field.to_owned(), Value::Object(old.clone()));
                    }
                }
                Some(Value::String(s)) if s == HIDDEN => {
                    let old = old.ok_or_else(|| nothing(field))?;
                    new.insert(field.to_owned(), Value::Object(old.clone()));
                }
                Some(Value::Null) => {
                    new.remove(field);
                }
                Some(Value::Object(entries)) => {
                    for (name, value) in entries.iter_mut() {
                        if value != HIDDEN {
                            continue;
                        }
                        // Header names are case-insensitive: `authorization` keeps `Authorization`.
                        let kept = old.and_then(|o| {
                            o.get(name).or_else(|| {
                                o.iter()
                                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                    .map(|(_, v)| v)
                            })
                        });
                        *value = kept
                            .filter(|v| v.is_string())
                            .cloned()
                            .ok_or_else(|| nothing(&format!("{field}.{name}")))?;
                    }
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Settings as stored: every secret (given plain) sealed with the server key.
    pub fn seal(&self, mut settings: Map<String, Value>, keys: &SecretBox) -> Map<String, Value> {
        let seal = |v: &mut Value| {
            if let Value::String(plain) = v {
                *v = Value::String(keys.seal(plain));
            }
        };
        for &field in self.fields {
            if let Some(v) = settings.get_mut(field) {
                seal(v);
            }
        }
        for &field in self.maps {
            if let Some(Value::Object(entries)) = settings.get_mut(field) {
                entries.values_mut().for_each(seal);
            }
        }
        settings
    }

    /// Settings as shown: every secret replaced by `***`.
    pub fn hide(&self, mut settings: Map<String, Value>) -> Map<String, Value> {
        let hidden = || Value::String(HIDDEN.into());
        for &field in self.fields {
            if let Some(v) = settings.get_mut(field).filter(|v| !v.is_null()) {
                *v = hidden();
            }
        }
        for &field in self.maps {
            match settings.get_mut(field) {
                Some(Value::Object(entries)) => entries.values_mut().for_each(|v| *v = hidden()),
                Some(v) if !v.is_null() => *v = hidden(),
                _ => {}
            }
        }
        settings
    }

    /// Settings as used: every sealed secret opened. A secret map that is not an object
    /// (what an older version could store for `"headers": "***"`) is dropped.
    pub fn open(
        &self,
        mut settings: Map<String, Value>,
        keys: &SecretBox,
    ) -> anyhow::Result<Map<String, Value>> {
        let open = |v: &mut Value| -> anyhow::Result<()> {
            if let Some(s) = v.as_str().filter(|s| SecretBox::is_sealed(s)) {
                *v = Value::String(keys.open(s)?);
            }
            Ok(())
        };
        for &field in self.fields {
            if let Some(v) = settings.get_mut(field) {
                open(v)?;
            }
        }
        for &field in self.maps {
            match settings.get_mut(field) {
                Some(Value::Object(entries)) => {
                    for v in entries.values_mut() {
                        open(v)?;
                    }
                }
                Some(_) => {
                    settings.remove(field);
                }
                None => {}
            }
        }
        Ok(settings)
    }
}

/// The settings of one kind of channel.
pub struct Kind {
    pub name: &'static str,
    pub required: &'static [&'static str],
    pub optional: &'static [&'static str],
    pub secrets: Secrets,
}

const fn secrets(fields: &'static [&'static str]) -> Secrets {
    Secrets { fields, maps: &[] }
}

pub const KINDS: &[Kind] = &[
    Kind {
        name: "webhook",
        required: &["url"],
        optional: &["headers", "secret", "body"],
        secrets: Secrets {
            fields: &["url", "secret"],
            maps: &["headers"],
        },
    },
    Kind {
        name: "slack",
        required: &["webhook_url"],
        optional: &[],
        secrets: secrets(&["webhook_url"]),
    },
    Kind {
        name: "teams",
        required: &["webhook_url"],
        optional: &["card"],
        secrets: secrets(&["webhook_url"]),
    },
    Kind {
        name: "pagerduty",
        required: &["routing_key"],
        optional: &["url"],
        secrets: secrets(&["routing_key"]),
    },
    Kind {
        name: "sms",
        required: &["url", "account", "from", "to"],
        optional: &["token"],
        secrets: secrets(&["token"]),
    },
    Kind {
        name: "email",
        required: &["to"],
        optional: &["format"],
        secrets: secrets(&[]),
    },
    // The URL may carry credentials, so it is a secret.
    Kind {
        name: "nats",
        required: &["url", "topic"],
        optional: &[],
        secrets: secrets(&["url"]),
    },
    Kind {
        name: "redis",
        required: &["url", "topic"],
        optional: &["mode"],
        secrets: secrets(&["url"]),
    },
    Kind {
        name: "mqtt",
        required: &["url", "topic"],
        optional: &["qos", "username", "password"],
        secrets: secrets(&["url", "password"]),
    },
    Kind {
        name: "amqp",
        required: &["url", "topic"],
        optional: &["exchange"],
        secrets: secrets(&["url"]),
    },
    // Kafka credentials are separate settings, so its broker list is not a secret.
    Kind {
        name: "kafka",
        required: &["url", "topic"],
        optional: &["username", "password", "sasl_mechanism", "ca_file"],
        secrets: secrets(&["password"]),
    },
];

pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

/// Checks a channel's settings (everything but `name`, `kind`, `shared`) for its kind.
pub fn validate(kind_name: &str, settings: &Map<String, Value>) -> Result<(), String> {
    let Some(kind) = kind(kind_name) else {
        let names: Vec<&str> = KINDS.iter().map(|k| k.name).collect();
        return Err(format!(
            "`kind`: `{kind_name}` is not one of {}",
            names.join(", ")
        ));
    };
    for field in settings.keys() {
        if !kind.required.contains(&field.as_str()) && !kind.optional.contains(&field.as_str()) {
            return Err(format!(
                "`{field}` is not a setting of a {kind_name} channel"
            ));
        }
    }
    for field in kind.required {
        if settings.get(*field).is_none_or(|v| v.is_null() || v == "") {
            return Err(format!("a {kind_name} channel needs `{field}`"));
        }
    }
    let string = |f: &str| match settings.get(f) {
        None | Some(Value::String(_)) => Ok(()),
        Some(_) => Err(format!("`{f}` must be a string")),
    };
    match kind_name {
        "webhook" => {
            string("url")?;
            string("secret")?;
            string("body")?;
            check_url(settings, "url", true)?;
            if let Some(h) = settings.get("headers") {
                let Value::Object(h) = h else {
                    return Err("`headers` must be an object of strings".into());
                };
                check_headers(h)?;
            }
            if let Some(Value::String(body)) = settings.get("body") {
                tellify_core::template::Templates::compile([("body".to_owned(), body.as_str())])
                    .map_err(|e| e.to_string())?;
            }
        }
        "slack" | "teams" => {
            string("webhook_url")?;
            check_url(settings, "webhook_url", true)?;
            if let Some(card) = settings.get("card")
                && card != "adaptive"
                && card != "legacy"
            {
                return Err("`card` must be `adaptive` (a Workflows webhook) or `legacy` (an Office 365 connector)".into());
            }
        }
        "pagerduty" => {
            string("routing_key")?;
            string("url")?;
            check_url(settings, "url", false)?;
            // PagerDuty refuses any other key with a 400: say so now, not in a dead delivery.
            if let Some(key) = settings.get("routing_key").and_then(Value::as_str)
                && key.chars().count() != 32
            {
                return Err("`routing_key` must be the 32 characters of an integration key".into());
            }
        }
        "sms" => {
            for f in ["url", "account", "from", "token"] {
                string(f)?;
            }
            check_url(settings, "url", false)?;
            recipients(settings.get("to")).map_err(|e| format!("`to`: {e}"))?;
        }
        "nats" | "redis" | "mqtt" | "amqp" => {
            for f in ["url", "topic", "mode", "username", "password", "exchange"] {
                string(f)?;
            }
            let schemes: &[&str] = match kind_name {
                "nats" => &["nats://", "tls://"],
                "redis" => &["redis://", "rediss://"],
                "mqtt" => &["mqtt://", "tcp://"],
                _ => &["amqp://", "amqps://"],
            };
            if let Some(url) = settings.get("url").and_then(Value::as_str)
                && !schemes.iter().any(|s| url.starts_with(s))
            {
                return Err(format!("`url` must start with {}", schemes.join(" or ")));
            }
            if let Some(mode) = settings.get("mode")
                && mode != "stream"
                && mode != "pubsub"
            {
                return Err("`mode` must be `stream` or `pubsub`".into());
            }
            if let Some(q) = settings.get("qos")
                && q != 0
                && q != 1
            {
                return Err("`qos` must be 0 or 1".into());
            }
        }
        "kafka" => {
            for f in [
                "url",
                "topic",
                "username",
                "password",
                "sasl_mechanism",
                "ca_file",
            ] {
                string(f)?;
            }
            let url = settings.get("url").and_then(Value::as_str).unwrap_or("");
            let Some((_, servers)) = crate::notify::kafka::parse_url(url) else {
                return Err("`url` must start with kafka:// or kafkas://".into());
            };
            if servers.split(',').any(|hp| {
                hp.rsplit_once(':')
                    .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            }) {
                return Err("`url` must list brokers as host:port, separated by commas".into());
            }
            // The broker list is shown on reads: credentials go in `username` and `password`.
            if servers.contains('@') {
                return Err(
                    "`url` must not carry credentials (it is shown on reads): use `username` and `password`"
                        .into(),
                );
            }
            if settings.contains_key("username") && !settings.contains_key("password") {
                return Err("a Kafka `username` needs a `password` (SASL)".into());
            }
            if let Some(m) = settings.get("sasl_mechanism").and_then(Value::as_str)
                && !crate::notify::kafka::MECHANISMS.contains(&m)
            {
                return Err(format!(
                    "`sasl_mechanism` must be one of {}",
                    crate::notify::kafka::MECHANISMS.join(", ")
                ));
            }
            let topic = settings.get("topic").and_then(Value::as_str).unwrap_or("");
            if topic.len() > 249
                || !topic
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err("`topic` must be up to 249 of a-z, A-Z, 0-9, `.`, `_`, `-`".into());
            }
        }
        "email" => {
            let to = recipients(settings.get("to")).map_err(|e| format!("`to`: {e}"))?;
            if let Some(bad) = to.iter().find(|a| !a.contains('@')) {
                return Err(format!("`to`: `{bad}` is not an email address"));
            }
            if let Some(f) = settings.get("format")
                && f != "html"
                && f != "text"
            {
                return Err("`format` must be `html` or `text`".into());
            }
        }
        _ => {}
    }
    Ok(())
}

/// Checks an http(s) URL setting. One that is not a secret is shown on reads, so it may not
/// carry credentials (`https://user:password@…`).
fn check_url(settings: &Map<String, Value>, field: &str, secret: bool) -> Result<(), String> {
    let Some(u) = settings.get(field).and_then(Value::as_str) else {
        return Ok(());
    };
    let bad = || format!("`{field}` must be an http:// or https:// URL");
    let url = reqwest::Url::parse(u).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(bad());
    }
    if !secret && (!url.username().is_empty() || url.password().is_some()) {
        return Err(format!(
            "`{field}` must not carry credentials (it is shown on reads)"
        ));
    }
    Ok(())
}

/// Headers Tellify sets itself, or that would break the request's framing.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "idempotency-key",
    "x-tellify-signature",
];

/// Webhook headers: each name an HTTP token, each value a string an HTTP header may hold
/// (no CR, LF or other control characters), so nothing can be smuggled into the request.
fn check_headers(headers: &Map<String, Value>) -> Result<(), String> {
    if headers.len() > 50 {
        return Err("`headers`: at most 50 headers".into());
    }
    for (name, value) in headers {
        let Value::String(value) = value else {
            return Err("`headers` must be an object of strings".into());
        };
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!(
                "`headers`: {name:?} is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
            ));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(format!("`headers`: {name:?} is set by Tellify itself"));
        }
        // The value is a secret: say what is wrong with it, never what it is.
        if value.len() > 8192 || reqwest::header::HeaderValue::from_str(value).is_err() {
            return Err(format!(
                "`headers`: the value of {name:?} must be up to 8 KiB without CR, LF or other control characters"
            ));
        }
    }
    Ok(())
}

/// A list of recipients: an array of strings, or one string (comma-separated allowed).
pub fn recipients(v: Option<&Value>) -> Result<Vec<String>, String> {
    let list: Vec<String> = match v {
        Some(Value::String(s)) => s
            .split(',')
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.as_str()
                    .map(|s| s.trim().to_owned())
                    .ok_or_else(|| "must be strings".to_owned())
            })
            .collect::<Result<_, _>>()?,
        _ => return Err("give a list of recipients".into()),
    };
    if list.is_empty() {
        return Err("give at least one recipient".into());
    }
    Ok(list)
}

/// New settings of a kind made whole and checked: the secrets the update keeps are filled in
/// from `stored` (the stored settings of the same kind, opened; see [`Secrets::keep`]), then
/// everything is checked as plain values. The result is plain: [`seal`] it to store it.
pub fn resolve(
    kind_name: &str,
    mut new: Map<String, Value>,
    stored: Option<&Map<String, Value>>,
) -> Result<Map<String, Value>, String> {
    if let Some(kind) = kind(kind_name) {
        kind.secrets.keep(&mut new, stored)?;
    }
    validate(kind_name, &new)?;
    Ok(new)
}

/// Settings as stored: the kind's secrets sealed.
pub fn seal(kind_name: &str, settings: Map<String, Value>, keys: &SecretBox) -> Map<String, Value> {
    match kind(kind_name) {
        Some(kind) => kind.secrets.seal(settings, keys),
        None => settings,
    }
}

/// Settings as shown: every secret replaced by `***`.
pub fn hide(kind_name: &str, settings: Map<String, Value>) -> Map<String, Value> {
    match kind(kind_name) {
        Some(kind) => kind.secrets.hide(settings),
        None => settings,
    }
}

/// Settings with every secret opened, for sending.
pub fn open(
    kind_name: &str,
    settings: Map<String, Value>,
    keys: &SecretBox,
) -> anyhow::Result<Map<String, Value>> {
    match kind(kind_name) {
        Some(kind) => kind.secrets.open(settings, keys),
        None => Ok(settings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    /// What `PUT` does: resolve against the stored settings (opened), then seal.
    fn put(
        kind: &str,
        new: Value,
        stored: Option<&Map<String, Value>>,
        keys: &SecretBox,
    ) -> Result<Map<String, Value>, String> {
        let opened = stored.map(|s| open(kind, s.clone(), keys).expect("opens"));
        resolve(kind, map(new), opened.as_ref()).map(|plain| seal(kind, plain, keys))
    }

    #[test]
    fn secrets_are_sealed_hidden_kept_and_opened() {
        let keys = SecretBox::from_key([1u8; 32]);
        let first = put(
            "webhook",
            json!({"url": "https://h.example/x", "secret": "s1", "headers": {"Authorization": "Bearer t"}}),
            None,
            &keys,
        )
        .expect("valid");
        assert!(SecretBox::is_sealed(first["url"].as_str().expect("url")));
        assert_eq!(
            hide("webhook", first.clone()),
            map(json!({"url": "***", "secret": "***", "headers": {"Authorization": "***"}}))
        );
        // An update that sends *** or leaves a secret out keeps it; per header too.
        let second = put(
            "webhook",
            json!({"url": "***", "headers": {"authorization": "***", "X-Env": "prod"}}),
            Some(&first),
            &keys,
        )
        .expect("valid");
        let opened = open("webhook", second.clone(), &keys).expect("opens");
        assert_eq!(opened["url"], "https://h.example/x");
        assert_eq!(opened["secret"], "s1");
        assert_eq!(
            opened["headers"],
            json!({"authorization": "Bearer t", "X-Env": "prod"})
        );
        // `"headers": "***"` keeps them all; `null` removes a secret.
        let third = put(
            "webhook",
            json!({"url": "***", "headers": "***", "secret": null}),
            Some(&second),
            &keys,
        )
        .expect("valid");
        let opened = open("webhook", third, &keys).expect("opens");
        assert_eq!(
            opened["headers"],
            json!({"authorization": "Bearer t", "X-Env": "prod"})
        );
        assert!(opened.get("secret").is_none());
        // *** with nothing stored is refused, not saved as nothing.
        for new in [
            json!({"url": "***"}),
            json!({"url": "https://x.example", "headers": "***"}),
            json!({"url": "https://x.example", "headers": {"X-Key": "***"}}),
        ] {
            let err = put("webhook", new.clone(), None, &keys).expect_err("nothing to keep");
            assert!(err.contains("nothing is stored"), "{new}: {err}");
        }
        // A stored value that was never sealed (older versions) still opens as itself.
        let legacy = map(json!({"url": "https://old.example", "headers": "***"}));
        let opened = open("webhook", legacy, &keys).expect("opens");
        assert_eq!(opened["url"], "https://old.example");
        assert!(
            opened.get("headers").is_none(),
            "a broken header map is dropped"
        );
    }

    #[test]
    fn webhook_headers_cannot_smuggle_anything_into_the_request() {
        let ok = |h: Value| {
            validate(
                "webhook",
                &map(json!({"url": "https://x.example", "headers": h})),
            )
        };
        assert!(ok(json!({"Authorization": "Bearer t", "X-Env": "prod ü"})).is_ok());
        for (headers, says) in [
            (json!({"X-A": "v\r\nX-Evil: 1"}), "X-A"),
            (json!({"X-A": "v\n"}), "X-A"),
            (json!({"X-A": "v\u{0}"}), "X-A"),
            (json!({"X-A\r\nX-Evil": "v"}), "not an HTTP header name"),
            (json!({"X A": "v"}), "not an HTTP header name"),
            (json!({"": "v"}), "not an HTTP header name"),
            (json!({"Content-Length": "1"}), "set by Tellify"),
            (json!({"X-A": 1}), "object of strings"),
        ] {
            let err = ok(headers.clone()).expect_err("refused");
            assert!(err.contains(says), "{headers}: {err}");
            assert!(!err.contains("Evil: 1"), "the value is not echoed: {err}");
        }
    }

    #[test]
    fn settings_are_checked_per_kind() {
        assert!(validate("webhook", &map(json!({"url": "https://x"}))).is_ok());
        assert!(
            validate("webhook", &map(json!({})))
                .expect_err("no url")
                .contains("url")
        );
        assert!(validate("webhook", &map(json!({"url": "ftp://x"}))).is_err());
        assert!(validate("webhook", &map(json!({"url": "***"}))).is_err());
        // A URL that is shown on reads may not carry credentials; a secret one may.
        assert!(validate("webhook", &map(json!({"url": "https://u:p@x.example"}))).is_ok());
        let key = "R0UT1NGKEY0123456789abcdefABCDEF";
        assert!(
            validate(
                "pagerduty",
                &map(json!({"routing_key": key, "url": "https://u:p@x.example"}))
            )
            .is_err()
        );
        assert!(
            validate(
                "kafka",
                &map(json!({"url": "kafka://u:p@h:9092", "topic": "t"}))
            )
            .expect_err("credentials")
            .contains("username")
        );
        assert!(
            validate(
                "webhook",
                &map(json!({"url": "https://x", "colour": "red"}))
            )
            .expect_err("unknown")
            .contains("colour")
        );
        assert!(validate("carrier-pigeon", &map(json!({}))).is_err());
        assert!(validate("email", &map(json!({"to": "a@x.org, b@y.org"}))).is_ok());
        assert!(validate("email", &map(json!({"to": ["nobody"]}))).is_err());
        assert!(
            validate(
                "teams",
                &map(json!({"webhook_url": "https://x", "card": "fancy"}))
            )
            .is_err()
        );
        let key = "R0UT1NGKEY0123456789abcdefABCDEF";
        assert!(validate("pagerduty", &map(json!({"routing_key": key}))).is_ok());
        assert!(validate("pagerduty", &map(json!({"routing_key": "short"}))).is_err());
        assert!(
            validate(
                "sms",
                &map(json!({"url": "https://x", "account": "AC1", "from": "+1", "to": "+2, +3"}))
            )
            .is_ok()
        );
    }
}
